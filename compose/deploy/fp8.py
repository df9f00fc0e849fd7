"""FP8 (W8A8 dynamic) merged models in the compressed-tensors format vLLM and transformers load.

Every linear layer's merged weight is stored as ``float8_e4m3fn`` with one scale per output
channel (``weight_scale``, shape ``(out, 1)``): ``W ~ q * scale``, ``scale = max|W_row| / 448``.
Activations are quantized per token at run time (``dynamic``), so nothing needs calibration.
Embeddings, ``lm_head`` and norms stay in bf16 (or ``--dtype``). Shards keep the base's names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compose.deploy.adapters import Adapter
from compose.deploy.base import BaseFolder
from compose.deploy.merged import (
    DTYPES,
    export_safetensors,
    make_plan,
    merged_blocks,
    merged_rounded,
    merged_tensor,
    widened,
    write_config,
    write_index,
)
from compose.deploy.stio import TensorInfo, torch_dtype
from schemas.errors import InvalidArgument
from schemas.export import ExportSpec

if TYPE_CHECKING:
    import torch

FP8_MAX = 448.0
# Model types whose projections are torch.nn.Linear (compressed-tensors targets "Linear").
LINEAR_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2")


def quantization_config() -> dict[str, Any]:
    """The ``quantization_config`` block of config.json (compressed-tensors, FP8 dynamic)."""
    fp8 = {"num_bits": 8, "type": "float", "symmetric": True, "group_size": None}
    return {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {**fp8, "strategy": "channel", "dynamic": False},
                "input_activations": {**fp8, "strategy": "token", "dynamic": True},
                "output_activations": None,
                "format": "float-quantized",
            }
        },
        "ignore": ["lm_head"],
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
    }


def quantize_fp8(
    weight: torch.Tensor, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(``float8_e4m3fn`` weight, per-row scale ``(out, 1)``) with ``weight ~ q * scale``.

    The scale is rounded to its stored dtype first and the weight divided by the rounded scale,
    so the pair reproduces the weight within fp8 rounding alone.
    """
    import torch

    amax = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
    scale = (amax / FP8_MAX).to(scale_dtype)
    scaled = (weight / scale.to(torch.float32)).clamp(-FP8_MAX, FP8_MAX)
    return scaled.to(torch.float8_e4m3fn), scale


def _is_linear(name: str, info: TensorInfo, base: BaseFolder) -> bool:
    if not name.endswith(".weight") or len(info.shape) != 2 or not info.is_float:
        return False
    return name != "lm_head.weight" and name != base.embed_name


def write_fp8(
    base: BaseFolder,
    adapters: list[Adapter],
    sources: list[Any],
    staging: Path,
    spec: ExportSpec,
    progress: Callable[[int], None] | None,
    device: str = "cpu",
) -> tuple[dict[str, Any], bool]:
    """Merged FP8 shards, index, config with ``quantization_config``, tokenizer files; the
    merge and the quantization run on ``device``."""
    import torch

    model_type = str(base.text_config().get("model_type", ""))
    if model_type not in LINEAR_MODEL_TYPES:
        raise InvalidArgument(
            f"FP8 export supports model types {', '.join(LINEAR_MODEL_TYPES)}; the base"
            f" {base.path} is {model_type or 'unknown'} (export --format safetensors instead)"
        )
    dtype = spec.dtype or "bf16"
    keep = torch_dtype(DTYPES[dtype])
    plan = make_plan(base, adapters, device)

    def entries_for(
        name: str, info: TensorInfo, target: str
    ) -> list[tuple[str, str, tuple[int, ...]]]:
        if _is_linear(name, info, base):
            scale = (name.removesuffix(".weight") + ".weight_scale", target, (info.shape[0], 1))
            return [(name, "F8_E4M3", info.shape), scale]
        return [(name, target if info.is_float else info.dtype, info.shape)]

    def transform(name: str, info: TensorInfo, data: torch.Tensor) -> list[tuple[str, Any]]:
        """Base tensor ``data`` -> the output tensors, merged and quantized per block of rows
        (the per-channel scales are per row, so blocks quantize exactly like the whole). On a
        GPU every linear weight, touched or not, is quantized there whole."""
        if not _is_linear(name, info, base):
            target = DTYPES[dtype] if info.is_float else info.dtype
            merged = merged_rounded(plan, name, target, data)
            return [(name, merged if merged is not None else data.to(torch_dtype(target)))]
        q = torch.empty(info.shape, dtype=torch.float8_e4m3fn)
        scale = torch.empty((info.shape[0], 1), dtype=keep)
        blocks = merged_blocks(plan, name, data)
        if blocks is None:
            merged = merged_tensor(plan, name, data)
            blocks = iter([(slice(None), merged if merged is not None else widened(plan, data))])
        for rows, block in blocks:
            q_rows, scale_rows = quantize_fp8(block, keep)
            q[rows].copy_(q_rows)  # from the GPU: only the fp8 bytes and scales come back
            scale[rows].copy_(scale_rows)
        return [(name, q), (name.removesuffix(".weight") + ".weight_scale", scale)]

    weight_map = export_safetensors(
        plan, staging, dtype=dtype, progress=progress, transform=transform, entries_for=entries_for
    )
    write_index(plan, staging, weight_map)
    write_config(plan, staging, dtype, {"quantization_config": quantization_config()})
    from compose.deploy.api import copy_side_files

    copy_side_files(base, staging)
    return {"scheme": "FP8_DYNAMIC (W8A8, per-channel weights)", "dtype": dtype}, plan.untie
