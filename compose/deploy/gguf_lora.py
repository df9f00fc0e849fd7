"""The adapter alone as a llama.cpp LoRA adapter GGUF (``general.type = adapter``).

Each LoRA module becomes ``<gguf tensor>.lora_a`` ``(r, in)`` and ``.lora_b`` ``(out, r)``
with the module's whole scale folded into B and ``adapter.lora.alpha = 0``, so llama.cpp
applies ``B A`` exactly (rsLoRA and rank/alpha patterns included) with ``--lora FILE``
(scale 1). q/k B rows are permuted like the base's q/k weights. One file per adapter.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compose.deploy.adapters import KIND_NAMES, Adapter
from compose.deploy.base import LM_HEAD, BaseFolder
from compose.deploy.gguf_model import gguf_arch, permute_rows
from schemas.errors import IncompatibleAdapters, InvalidArgument
from schemas.export import ExportSpec

_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


def check_gguf_lora(base: BaseFolder, adapters: list[Adapter], spec: ExportSpec) -> None:
    """Refuse what a llama.cpp LoRA cannot express, naming the adapter and module."""
    gguf_arch(base)
    if not adapters:
        raise InvalidArgument("--format gguf-lora needs at least one adapter")
    for adapter in adapters:
        for edit in adapter.edits:
            if edit.kind != "lora" or edit.lora is None:
                what = KIND_NAMES.get(edit.kind, edit.kind)
                raise IncompatibleAdapters(
                    f"adapter {adapter.label}: {what} on {edit.module} cannot be a llama.cpp LoRA"
                    " (plain LoRA only; export --format gguf to merge it instead)",
                    adapter=adapter.label,
                    module=edit.module,
                )
            if edit.target == LM_HEAD and base.tied:
                raise IncompatibleAdapters(
                    f"adapter {adapter.label}: LoRA on lm_head, but the base ties it to the"
                    " embeddings (export --format gguf to merge it instead)",
                    adapter=adapter.label,
                    module=edit.module,
                )


def write_gguf_lora(
    base: BaseFolder,
    adapters: list[Adapter],
    sources: list[Any],
    staging: Path,
    spec: ExportSpec,
    progress: Callable[[int], None] | None,
) -> tuple[dict[str, Any], bool]:
    """One ``<name>.gguf`` per adapter in ``staging``."""
    names: list[str] = []
    for adapter, source in zip(adapters, sources, strict=True):
        stem = re.sub(r"[^A-Za-z0-9._-]", "-", source.name or adapter.path.name) or "adapter"
        while f"{stem}.gguf" in names:
            stem += "-2"
        names.append(f"{stem}.gguf")
        _write_one(base, adapter, staging / names[-1], _TYPES[spec.quant or "f32"])
    return {"files": ", ".join(names), "scale": "folded into lora_b (alpha=0)"}, False


def _write_one(base: BaseFolder, adapter: Adapter, path: Path, kind_name: str) -> None:
    import gguf
    import numpy as np

    arch = gguf_arch(base)
    config = base.text_config()
    n_layers = int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.name.upper()], n_layers)
    kind = gguf.GGMLQuantizationType[kind_name]

    tensors: list[tuple[str, Any]] = []
    for edit in sorted(adapter.edits, key=lambda e: e.target):
        assert edit.lora is not None
        gguf_name = name_map.get_name(edit.target, try_suffixes=(".weight",))
        if gguf_name is None:
            raise IncompatibleAdapters(
                f"adapter {adapter.label}: module {edit.module} has no GGUF counterpart",
                adapter=adapter.label,
                module=edit.module,
            )
        b = edit.lora.b * edit.lora.scale
        if arch.permute_qk and edit.target.endswith("q_proj.weight"):
            b = permute_rows(b, n_head)
        elif arch.permute_qk and edit.target.endswith("k_proj.weight"):
            b = permute_rows(b, n_kv)
        tensors.append((f"{gguf_name}.lora_a", edit.lora.a))
        tensors.append((f"{gguf_name}.lora_b", b))

    writer = gguf.GGUFWriter(str(path), arch.name)
    writer.add_name(adapter.path.name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)
    for name, tensor in tensors:
        data = gguf.quants.quantize(tensor.contiguous().numpy().astype(np.float32), kind)
        writer.add_tensor(name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    assert writer.fout is not None
    for fout in writer.fout:
        fout.flush()
        os.fsync(fout.fileno())
    writer.close()
