"""Multi-LoRA bundles for vLLM: adapter folders, a manifest and the serve command line.

The base is referenced by path (not copied); each adapter is checked against it (targets
exist, shapes fit, plain LoRA only) and copied into ``adapters/<name>/``. vLLM applies one
scale per adapter, so adapters with rank/alpha patterns are rewritten with each module's own
scale folded into B (exact). ``--max-lora-rank`` is the smallest value vLLM accepts that holds
the largest module rank.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compose.deploy.adapters import KIND_NAMES, Adapter
from compose.deploy.base import BaseFolder
from compose.deploy.stio import read_header, read_tensor
from compose.deploy.writers import StreamWriter
from schemas.errors import IncompatibleAdapters
from schemas.export import ExportSpec

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def check_bundle(base: BaseFolder, adapters: list[Adapter], spec: ExportSpec) -> None:
    """Each adapter must be a LoRA vLLM can serve on this base (the edits were shape-checked)."""
    for adapter in adapters:
        if adapter.method != "lora":
            raise IncompatibleAdapters(
                f"adapter {adapter.label}: vLLM serves LoRA adapters only, not {adapter.method}"
                " (merge it with --format safetensors instead)",
                adapter=adapter.label,
            )
        for edit in adapter.edits:
            if edit.kind != "lora":
                what = KIND_NAMES.get(edit.kind, edit.kind)
                raise IncompatibleAdapters(
                    f"adapter {adapter.label}: {what} on {edit.module} is not served by vLLM's"
                    " multi-LoRA (merge it with --format safetensors instead)",
                    adapter=adapter.label,
                    module=edit.module,
                )
        rank = max_rank(adapter)
        if rank > VLLM_RANKS[-1]:
            raise IncompatibleAdapters(
                f"adapter {adapter.label}: rank {rank} exceeds vLLM's largest --max-lora-rank"
                f" ({VLLM_RANKS[-1]})",
                adapter=adapter.label,
            )


def max_rank(adapter: Adapter) -> int:
    return max((e.lora.a.shape[0] for e in adapter.edits if e.lora is not None), default=0)


def write_bundle(
    base: BaseFolder,
    adapters: list[Adapter],
    sources: list[Any],
    staging: Path,
    spec: ExportSpec,
    progress: Callable[[int], None] | None,
) -> tuple[dict[str, Any], bool]:
    """``adapters/<name>/``, ``bundle.json`` and ``serve.sh`` in ``staging``."""
    final = staging.parent / re.sub(r"^\.(.*)\.hub-[0-9a-f]+\.incomplete$", r"\1", staging.name)
    base_path = str(base.path.resolve())
    entries: list[dict[str, Any]] = []
    names: list[str] = []
    for adapter, source in zip(adapters, sources, strict=True):
        name = re.sub(r"[^A-Za-z0-9._-]", "-", source.name or adapter.path.name) or "adapter"
        while name in names:
            name += "-2"
        names.append(name)
        dest = staging / "adapters" / name
        dest.mkdir(parents=True)
        _copy_adapter(adapter, dest)
        entries.append(
            {
                "name": name,
                "path": f"adapters/{name}",
                "source": adapter.label,
                "rank": max_rank(adapter),
                "target_modules": sorted({e.module.rsplit(".", 1)[-1] for e in adapter.edits}),
            }
        )
    top = max(int(e["rank"]) for e in entries)
    lora_rank = next(r for r in VLLM_RANKS if r >= top)
    argv = [
        "vllm",
        "serve",
        base_path,
        "--enable-lora",
        "--max-lora-rank",
        str(lora_rank),
        "--max-loras",
        str(len(entries)),
        "--lora-modules",
        *[f"{e['name']}={final.resolve() / e['path']}" for e in entries],
    ]
    command = shlex.join(argv)
    manifest = {
        "base": base_path,
        "adapters": entries,
        "max_lora_rank": lora_rank,
        "max_loras": len(entries),
        "command": argv,
    }
    (staging / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")
    relative = " ".join(f'{e["name"]}="$here/{e["path"]}"' for e in entries)
    script = (
        "#!/bin/sh\n# Serve the base with every adapter of this bundle (multi-LoRA).\n"
        'here="$(cd "$(dirname "$0")" && pwd)"\n'
        f"exec vllm serve {shlex.quote(base_path)} --enable-lora --max-lora-rank {lora_rank}"
        f' --max-loras {len(entries)} --lora-modules {relative} "$@"\n'
    )
    (staging / "serve.sh").write_text(script)
    (staging / "serve.sh").chmod(0o755)
    return {"command": command, "max_lora_rank": lora_rank}, False


def _copy_adapter(adapter: Adapter, dest: Path) -> None:
    """Copy the adapter; with rank/alpha patterns, fold each module's whole scale into B.

    vLLM scales every module by the config's ``lora_alpha / r``; PEFT by each module's own
    pattern. After folding, both scales are 1: ``lora_alpha = r``, rsLoRA off, and an
    ``alpha_pattern`` equal to the ``rank_pattern`` (kept: PEFT sizes modules from it).
    """
    config = adapter.config
    if not (config.get("rank_pattern") or config.get("alpha_pattern")):
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(adapter.path / name, dest / name)
        return
    scales = {e.module: e.lora.scale for e in adapter.edits if e.lora is not None}
    headers, _ = read_header(adapter.path / "adapter_model.safetensors")
    entries = [(n, i.dtype, i.shape) for n, i in headers.items()]
    writer = StreamWriter(dest / "adapter_model.safetensors", entries, {"format": "pt"})
    try:
        for name, info in headers.items():
            tensor = read_tensor(info)
            module = name.removeprefix("base_model.model.").rsplit(".lora_B.", 1)[0]
            if ".lora_B." in name and module in scales:
                tensor = (tensor.float() * scales[module]).to(tensor.dtype)
            writer.write(name, tensor)
        writer.close()
        writer.wait()
    except BaseException:
        writer.abort()  # its thread would otherwise keep the process alive
        raise
    ranks = dict(config.get("rank_pattern") or {})
    folded = {
        **config,
        "lora_alpha": config["r"],
        "use_rslora": False,
        "rank_pattern": ranks,
        "alpha_pattern": dict(ranks),
    }
    (dest / "adapter_config.json").write_text(json.dumps(folded, indent=2) + "\n")
