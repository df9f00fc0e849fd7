"""Export from the registry: resolve references to folders, then call ``compose.deploy``.

Adapters (and a base, when it is a registry reference) are laid out as folders of links to the
stored blobs: nothing is copied, and the model card names the exact commits.

Example:
    >>> from hub import Registry
    >>> Registry().export("team/sql-lora@prod", base="models/llama", output="deploy/sql",
    ...                   format="gguf", quant="q8_0")                    # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.folders import check_outside_registry
from hub.progress import byte_progress
from schemas.errors import InvalidArgument

if TYPE_CHECKING:
    from compose.deploy import AdapterSource, ExportResult
    from hub.registry import Registry
    from schemas.card import AdapterCard


def export(
    registry: Registry,
    refs: Sequence[str | os.PathLike[str]],
    *,
    base: str | os.PathLike[str],
    output: str | os.PathLike[str],
    format: str = "safetensors",
    dtype: str | None = None,
    quant: str | None = None,
    device: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> ExportResult:
    """Export ``base`` with the adapters ``refs`` (registry references or folders), in order.

    See ``compose.deploy.export_model`` for the formats, options and errors; also raises
    ``InvalidArgument`` when ``output`` is, contains or is inside the registry folder. The
    folders of links to stored blobs live under the registry's ``tmp/`` (see ``scratch``).
    """
    from compose.adapterhub import is_adapterhub_folder
    from compose.deploy import export_model
    from hub.formats.adapterhub import merge_refusal

    check_outside_registry(Path(output), registry.home)
    with registry.scratch("export") as scratch:
        sources = []
        recipe: dict[str, Any] | None = None
        for i, ref in enumerate(refs):
            source, card = _adapter(registry, ref, scratch / f"adapter-{i}")
            for member in _expand_stack(source):
                if is_adapterhub_folder(member.path):
                    raise merge_refusal(member.path, member.label)
                sources.append(member)
            if card is not None and card.lineage is not None and card.lineage.recipe:
                recipe = {**card.lineage.recipe, "inputs": card.lineage.inputs}
        base_dir, base_label = _base(registry, base, scratch / "base", format)
        total = sum(p.stat().st_size for p in base_dir.glob("*.safetensors"))
        bar = byte_progress(f"export {format}", total) if progress else byte_progress("", 0)
        try:
            return export_model(
                sources,
                base_dir,
                output,
                format=format,
                dtype=dtype,
                quant=quant,
                device=device,
                force=force,
                base_label=base_label,
                recipe=recipe,
                progress=bar.update,
            )
        finally:
            bar.close()


def _is_folder(ref: str | os.PathLike[str]) -> bool:
    return isinstance(ref, os.PathLike) or Path(ref).is_dir() or str(ref).startswith((".", "/"))


def _adapter(
    registry: Registry, ref: str | os.PathLike[str], scratch: Path
) -> tuple[AdapterSource, AdapterCard | None]:
    from compose.deploy import AdapterSource

    if _is_folder(ref):
        folder = Path(ref)
        return AdapterSource(folder, str(folder), folder.name), None
    card = registry.show(str(ref))
    registry.link_files(card, scratch)
    return AdapterSource(scratch, card.ref, card.repo.split("/")[1]), card


def _expand_stack(source: AdapterSource) -> list[AdapterSource]:
    """A stack composite exports as its members, merged in order, like adapters given in turn."""
    from compose.composites import COMPOSITE_FILE, read_composite
    from compose.deploy import AdapterSource

    if not (source.path / COMPOSITE_FILE).is_file():
        return [source]
    spec = read_composite(source.path)
    if spec["kind"] != "stack":
        raise InvalidArgument(
            f"{source.label} is a prompt ensemble: it runs N prompts at inference and has no"
            " merged form; export its members, or compose it with --average first"
        )
    return [
        AdapterSource(source.path / m["path"], m["ref"], m["ref"].split("@")[0].split("/")[1])
        for m in spec["members"]
    ]


def _base(
    registry: Registry, base: str | os.PathLike[str], scratch: Path, fmt: str
) -> tuple[Path, str]:
    if _is_folder(base):
        return Path(base), str(base)
    if fmt == "vllm-bundle":
        raise InvalidArgument(
            f"--base {base}: vllm-bundle needs a local base folder (vLLM loads the base by path);"
            f" `hub pull {base} -o DIR` first"
        )
    card = registry.show(str(base))
    registry.link_files(card, scratch)
    return scratch, card.ref
