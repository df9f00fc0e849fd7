"""``export_model``: one entry point for every deploy format.

The steps are the same for each format: validate the request, read the base's headers, read
and shape-check every adapter against them, check the disk space, then write into a staging
folder that is renamed into place only when everything is written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compose.deploy.adapters import Adapter, check_resized_format, load_adapter
from compose.deploy.base import SIDE_FILES, BaseFolder
from compose.deploy.merged import keeps_layout
from compose.deploy.output import check_disk_space, model_card
from compose.deploy.peft_merge import (
    adapter_row,
    check_peft_format,
    export_with_peft,
    refuse_unmergeable,
)
from compose.deploy.stio import ReadAhead
from compose.deploy.writers import ShardCopier
from compose.staging import check_output, staged_folder
from schemas.errors import InvalidArgument
from schemas.export import ExportSpec
from schemas.formats import MERGING_FORMATS


@dataclass(frozen=True)
class AdapterSource:
    """One adapter to export: its folder, and how to name it in cards and bundles."""

    path: Path
    label: str
    """Provenance, e.g. ``team/sql-lora@<commit>`` (default: the folder)."""
    name: str | None = None
    """Short name for bundles (``--lora-modules NAME=PATH``); default: the folder name."""


@dataclass
class ExportResult:
    """What ``export_model`` wrote."""

    path: Path
    format: str
    files: list[str]
    size_bytes: int
    seconds: float
    base: str
    adapters: list[str]
    untied: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    """Format facts: GGUF tensor type, the vLLM serve command, FP8 scheme, the ``device``
    the merge ran on (``cpu``/``cuda``, for the formats that merge)..."""


def export_model(
    adapters: Sequence[AdapterSource | str | os.PathLike[str]],
    base: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    format: str = "safetensors",
    dtype: str | None = None,
    quant: str | None = None,
    device: str | None = None,
    force: bool = False,
    base_label: str | None = None,
    recipe: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Export ``base`` with ``adapters`` applied in order, in ``format``, to ``output``.

    Args:
        adapters: adapter folders (or ``AdapterSource`` with provenance), applied in order;
            a stack is just a longer list. ``vllm-bundle`` keeps them separate instead.
        base: the base model folder (Hugging Face layout, safetensors weights).
        output: folder to create (refused if it exists unless ``force``).
        format: ``safetensors``, ``gguf``, ``gguf-lora``, ``fp8`` or ``vllm-bundle``.
        dtype: ``bf16``/``fp16``/``fp32`` for safetensors (default: the base's dtype).
        quant: GGUF type (``f16``, ``bf16``, ``q8_0``, ``q4_0``, K-quants with llama-cpp-python).
        device: where the merge runs for the formats that merge (safetensors, gguf, fp8):
            ``auto`` (the default: CUDA when available), ``cpu`` or ``cuda``. Reading and
            writing stream on the CPU either way. A GPU result is the CPU's within the float
            bound (fp32 on both, rounded once), so its bytes may differ by one step of the
            output dtype where the fp32 values differ in their last bits. ``cpu`` and
            ``cuda`` are refused for gguf-lora and vllm-bundle, which merge nothing.
        force: replace an existing output folder.
        base_label: how to name the base in the model card (default: its folder).
        recipe: the composite recipe to record in the model card, if any.
        progress: called with the number of base bytes processed, tensor by tensor.

    Returns:
        ``ExportResult`` with the folder, files and sizes.

    Raises:
        InvalidArgument (also ``--device cuda`` without a CUDA device), OutputExists,
        InsufficientDiskSpace, InvalidAdapter, IncompatibleAdapters (shapes, architecture,
        unsupported method for the format).

    Example:
        >>> export_model(["out/sql-lora"], "models/llama", "deploy/llama-sql")  # doctest: +SKIP
        >>> export_model(["out/sql-lora"], "models/llama", "deploy/llama-sql-fp8",
        ...              format="fp8", device="cuda")                       # doctest: +SKIP
    """
    started = time.perf_counter()
    spec = ExportSpec.of(format, dtype, quant, device)
    merges = spec.format in MERGING_FORMATS
    # An explicit cuda is checked before anything is written (it imports torch first, which
    # cpu and auto leave for later, overlapping the import with the base's copy).
    where = _merge_device(spec.device) if spec.device == "cuda" else None
    sources = [a if isinstance(a, AdapterSource) else _source(a) for a in adapters]
    if not sources and spec.format in ("gguf-lora", "vllm-bundle"):
        raise InvalidArgument(f"--format {spec.format} needs at least one adapter")
    target = Path(output)
    check_output(target, force=force)
    base_folder = BaseFolder.open(Path(base))
    label = base_label or str(Path(base))
    rows = [(adapter_row(s.path), s.label) for s in sources]
    for row, adapter_label in rows:
        if row is not None and row.merge == "none":
            raise refuse_unmergeable(row, adapter_label)
    if any(row is not None and row.merge == "peft" for row, _ in rows):
        # Methods only PEFT can merge: the whole stack goes through merge_and_unload.
        check_peft_format([(r, lab) for r, lab in rows if r is not None], spec)
        files, size, details = export_with_peft(
            base_folder,
            sources,
            target,
            spec,
            force=force,
            base_label=label,
            recipe=recipe,
            device=where or _merge_device(spec.device),
        )
        return ExportResult(
            target,
            spec.format,
            files,
            size,
            time.perf_counter() - started,
            label,
            [s.label for s in sources],
            details=details,
        )
    with contextlib.ExitStack() as stack:
        copier = None
        if spec.format == "safetensors" and keeps_layout(
            base_folder, spec.dtype, [s.path for s in sources]
        ):
            # The output keeps the base's file layout: copy the base now, kernel-side, while
            # the adapters are read and torch is imported; the merge then patches the copy.
            check_disk_space(target, _estimate(base_folder, [], spec))
            staging = stack.enter_context(staged_folder(target, force=force))
            shards = {shard: base_folder.path / shard for shard in base_folder.shards}
            # Entered after the staging folder: stopped before a failed export removes it.
            copier = stack.enter_context(ShardCopier(shards, staging))
        read_ahead = None
        if copier is None and spec.format in ("safetensors", "fp8", "gguf"):
            # Formats that read the whole base start the disk on it now, for the same reason.
            read_ahead = ReadAhead([base_folder.path / shard for shard in base_folder.shards])
            stack.callback(read_ahead.close)
        if merges:
            where = where or _merge_device(spec.device)
        loaded = [
            load_adapter(s.path, base_folder, s.label, device=where or "cpu") for s in sources
        ]
        check_resized_format(loaded, base_folder, spec.format)
        check = _CHECKS.get(spec.format)
        if check is not None:
            check(base_folder, loaded, spec)
        if copier is None:
            check_disk_space(target, _estimate(base_folder, loaded, spec))
            staging = stack.enter_context(staged_folder(target, force=force))
        tracked = _tracked(progress, read_ahead)
        on = {"device": where} if where is not None else {}
        if copier is not None:
            details, untied = _write_safetensors(
                base_folder, loaded, sources, staging, spec, tracked, copier=copier, **on
            )
        else:
            details, untied = _WRITERS[spec.format](
                base_folder, loaded, sources, staging, spec, tracked, **on
            )
        card = model_card(
            title=f"{Path(target).name}",
            fmt=spec.format,
            base=label,
            adapters=[s.label for s in sources],
            details={k: v for k, v in details.items() if isinstance(v, str | int | float)},
            recipe=recipe,
        )
        (staging / "README.md").write_text(card)
        if where is not None:
            # In the result, not the card: the output says what it is, not where it was made.
            details = {**details, "device": where}
        files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
    return ExportResult(
        target,
        spec.format,
        files,
        size,
        time.perf_counter() - started,
        label,
        [s.label for s in sources],
        untied,
        details,
    )


def _tracked(
    progress: Callable[[int], None] | None, read_ahead: ReadAhead | None
) -> Callable[[int], None] | None:
    """The progress callback, also moving the read-ahead window along."""
    if read_ahead is None:
        return progress

    def advance(nbytes: int) -> None:
        read_ahead.advance(nbytes)
        if progress is not None:
            progress(nbytes)

    return advance


def _merge_device(requested: str | None) -> str:
    """Where the merge runs: ``cpu`` or ``cuda``, as ``device_for`` resolves ``auto`` (unset)
    for every command with ``--device``; ``cuda`` without a GPU is its one-line error."""
    if requested == "cpu":
        return "cpu"  # without importing torch: the base's copy starts first
    from compose.evaluate import device_for

    return device_for(requested or "auto").type


def _source(path: str | os.PathLike[str]) -> AdapterSource:
    folder = Path(path)
    return AdapterSource(folder, str(folder), folder.name)


def _estimate(base: BaseFolder, adapters: list[Adapter], spec: ExportSpec) -> int:
    """Bytes the output will take (upper bound), for the up-front disk space check."""
    size = base.size_bytes
    if spec.format == "safetensors" and spec.dtype == "fp32":
        size *= 2
    if spec.format in ("gguf-lora", "vllm-bundle"):
        size = sum(sum(f.stat().st_size for f in a.path.iterdir() if f.is_file()) for a in adapters)
    if base.tied:
        size += max((i.nbytes for i in base.tensors.values()), default=0)
    return size


# -- writers -----------------------------------------------------------------------------
Writer = Callable[..., tuple[dict[str, Any], bool]]


def _write_safetensors(
    base: BaseFolder,
    adapters: list[Adapter],
    sources: list[AdapterSource],
    staging: Path,
    spec: ExportSpec,
    progress: Callable[[int], None] | None,
    copier: ShardCopier | None = None,
    device: str = "cpu",
) -> tuple[dict[str, Any], bool]:
    from compose.deploy.merged import export_safetensors, make_plan, write_config, write_index

    plan = make_plan(base, adapters, device)
    if copier is not None and plan.untie:  # keeps_layout is conservative: never true
        raise RuntimeError(f"{base.path}: the base was copied to be patched, but must be untied")
    weight_map = export_safetensors(
        plan, staging, dtype=spec.dtype, progress=progress, copier=copier
    )
    write_index(plan, staging, weight_map)
    write_config(plan, staging, spec.dtype)
    copy_side_files(base, staging)
    if plan.resized:
        # The new tokens' tokenizer is the one saved with the adapter, where there is one.
        for source in sources:
            for name in SIDE_FILES:
                if name != "generation_config.json" and (source.path / name).is_file():
                    shutil.copy2(source.path / name, staging / name)
    return {"dtype": spec.dtype or "as base", "shards": len(plan.shard_tensors)}, plan.untie


def copy_side_files(base: BaseFolder, staging: Path) -> None:
    """Tokenizer, generation config and chat template files, copied as they are."""
    for path in base.side_files():
        shutil.copy2(path, staging / path.name)


def _write_fp8(*args: Any, **kwargs: Any) -> tuple[dict[str, Any], bool]:
    from compose.deploy.fp8 import write_fp8

    return write_fp8(*args, **kwargs)


def _write_gguf(*args: Any, **kwargs: Any) -> tuple[dict[str, Any], bool]:
    from compose.deploy.gguf_model import write_gguf

    return write_gguf(*args, **kwargs)


def _write_gguf_lora(*args: Any) -> tuple[dict[str, Any], bool]:
    from compose.deploy.gguf_lora import write_gguf_lora

    return write_gguf_lora(*args)


def _write_bundle(*args: Any) -> tuple[dict[str, Any], bool]:
    from compose.deploy.bundle import write_bundle

    return write_bundle(*args)


def _check_gguf(base: BaseFolder, adapters: list[Adapter], spec: ExportSpec) -> None:
    from compose.deploy.gguf_model import check_gguf

    check_gguf(base, adapters, spec)


def _check_gguf_lora(base: BaseFolder, adapters: list[Adapter], spec: ExportSpec) -> None:
    from compose.deploy.gguf_lora import check_gguf_lora

    check_gguf_lora(base, adapters, spec)


def _check_bundle(base: BaseFolder, adapters: list[Adapter], spec: ExportSpec) -> None:
    from compose.deploy.bundle import check_bundle

    check_bundle(base, adapters, spec)


_WRITERS: dict[str, Writer] = {
    "safetensors": _write_safetensors,
    "fp8": _write_fp8,
    "gguf": _write_gguf,
    "gguf-lora": _write_gguf_lora,
    "vllm-bundle": _write_bundle,
}
_CHECKS: dict[str, Callable[[BaseFolder, list[Adapter], ExportSpec], None]] = {
    "gguf": _check_gguf,
    "gguf-lora": _check_gguf_lora,
    "vllm-bundle": _check_bundle,
}
