"""Merged llama-family models as GGUF for llama.cpp / ollama, written tensor by tensor.

The header (metadata and every tensor's name, shape and type) is computed from the base's
safetensors headers alone; then each tensor is merged, permuted, quantized and appended, so
memory holds one tensor at a time. K-quants go through llama.cpp's own quantizer
(llama-cpp-python) from a lossless intermediate file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compose.deploy.adapters import Adapter
from compose.deploy.base import BaseFolder
from compose.deploy.merged import (
    MergePlan,
    exact_fp32,
    make_plan,
    merged_blocks,
    merged_tensor,
    widened,
)
from compose.deploy.stio import read_tensor
from schemas.errors import InvalidArgument
from schemas.export import K_QUANTS, ExportSpec

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass(frozen=True)
class GgufArch:
    name: str
    """llama.cpp's architecture (``general.architecture``)."""
    permute_qk: bool
    """llama.cpp's ``llama`` rope rotates interleaved pairs; HF checkpoints are half-split."""


SUPPORTED: dict[str, GgufArch] = {
    "LlamaForCausalLM": GgufArch("llama", True),
    "MistralForCausalLM": GgufArch("llama", True),
    "Qwen2ForCausalLM": GgufArch("qwen2", False),
}
_SKIP_SUFFIXES = ("rotary_emb.inv_freq",)


def gguf_arch(base: BaseFolder) -> GgufArch:
    """The GGUF architecture of ``base``.

    Raises:
        InvalidArgument: the base is not one of the supported architectures (listed).
    """
    arch = SUPPORTED.get(base.architecture)
    if arch is None:
        raise InvalidArgument(
            f"GGUF export supports {', '.join(SUPPORTED)}; the base {base.path} is a"
            f" {base.architecture or 'model without config.architectures'}"
            " (export --format safetensors instead)"
        )
    return arch


def check_gguf(base: BaseFolder, adapters: list[Adapter], spec: ExportSpec) -> None:
    """Everything that can be refused before writing: architecture, rope, tokenizer, quant."""
    gguf_arch(base)
    _rope(base.text_config(), base)
    if not any((base.path / f).is_file() for f in ("tokenizer.model", "tokenizer.json")):
        raise InvalidArgument(
            f"base {base.path}: no tokenizer.model or tokenizer.json;"
            " GGUF needs the base's tokenizer"
        )
    if spec.quant in K_QUANTS:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as error:
            raise InvalidArgument(
                f"--quant {spec.quant} needs llama.cpp's quantizer: pip install llama-cpp-python"
                " (or use f16, bf16, q8_0 or q4_0)"
            ) from error


def _rope(config: dict[str, Any], base: BaseFolder) -> tuple[float, dict[str, Any]]:
    """(rope theta, scaling parameters) from a transformers 4 or 5 config."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind not in ("default", "linear", "llama3"):
        raise InvalidArgument(
            f"base {base.path}: rope scaling {kind!r} is not supported for GGUF export"
            " (supported: default, linear, llama3)"
        )
    params["rope_type"] = kind
    return theta, params


def permute_rows(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's half-split rotary layout -> llama.cpp's interleaved one (q/k rows)."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def llama3_rope_factors(theta: float, dim: int, params: dict[str, Any]) -> torch.Tensor:
    """The per-frequency factors llama.cpp reads from ``rope_freqs.weight`` for Llama 3 rope."""
    import torch

    factor = float(params.get("factor", 8.0))
    low = float(params.get("low_freq_factor", 1.0))
    high = float(params.get("high_freq_factor", 4.0))
    old_ctx = float(params.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factors = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32)


_QUANT_TYPES = {"f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0", "f32": "F32"}
_FILE_TYPES = {
    "F16": "MOSTLY_F16",
    "BF16": "MOSTLY_BF16",
    "Q8_0": "MOSTLY_Q8_0",
    "Q4_0": "MOSTLY_Q4_0",
}


def _tensor_type(gguf_name: str, shape: tuple[int, ...], mode: str) -> Any:
    """The GGML type of one tensor: 1-D in F32; Q4_0 keeps embeddings/output at Q8_0."""
    import gguf

    qt = gguf.GGMLQuantizationType
    if len(shape) < 2:
        return qt.F32
    kind = qt[mode]
    if mode == "Q4_0" and gguf_name.startswith(("token_embd", "output.")):
        kind = qt.Q8_0
    block, _ = gguf.GGML_QUANT_SIZES[kind]
    if shape[-1] % block:
        return qt.F16  # rows that are not whole blocks stay F16, as llama.cpp's converter does
    return kind


def _nbytes(shape: tuple[int, ...], kind: Any) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[kind]
    return math.prod(shape) // block * size


def write_gguf(
    base: BaseFolder,
    adapters: list[Adapter],
    sources: list[Any],
    staging: Path,
    spec: ExportSpec,
    progress: Callable[[int], None] | None,
    device: str = "cpu",
) -> tuple[dict[str, Any], bool]:
    """Write ``model-<quant>.gguf`` (and an ollama ``Modelfile``) into ``staging``; tensors
    are merged and encoded on ``device``."""
    quant = spec.quant or "f16"
    plan = make_plan(base, adapters, device)
    if quant in K_QUANTS:
        lossless = "bf16" if _base_is_bf16(base) else "f16"
        intermediate = staging / f".intermediate-{lossless}.gguf"
        _write(plan, intermediate, _QUANT_TYPES[lossless], progress)
        final = staging / f"model-{quant}.gguf"
        _llama_quantize(intermediate, final, quant)
        intermediate.unlink()
    else:
        final = staging / f"model-{quant}.gguf"
        _write(plan, final, _QUANT_TYPES[quant], progress)
    (staging / "Modelfile").write_text(f"FROM ./{final.name}\n")
    return {"gguf": final.name, "quant": quant, "architecture": gguf_arch(base).name}, plan.untie


def _base_is_bf16(base: BaseFolder) -> bool:
    return any(info.dtype == "BF16" for info in base.tensors.values())


def _write(plan: MergePlan, path: Path, mode: str, progress: Callable[[int], None] | None) -> None:
    import gguf

    base = plan.base
    arch = gguf_arch(base)
    config = base.text_config()
    n_layers = int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    theta, rope = _rope(config, base)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.name.upper()], n_layers)

    # Pass 1: the tensor list from headers only.
    order: list[tuple[str, str, tuple[int, ...], Any]] = []  # (hf name, gguf name, shape, type)
    for name in plan.names:
        if name.endswith(_SKIP_SUFFIXES):
            continue
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise InvalidArgument(f"base {base.path}: tensor {name} has no GGUF counterpart")
        shape = plan.source(name).shape
        order.append((name, gguf_name, shape, _tensor_type(gguf_name, shape, mode)))
    rope_factors = None
    if rope["rope_type"] == "llama3":
        rope_factors = llama3_rope_factors(theta, head_dim, rope)
        rope_name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        order.append(("", rope_name, tuple(rope_factors.shape), gguf.GGMLQuantizationType.F32))

    writer = gguf.GGUFWriter(str(path), arch.name)
    writer.add_name(base.path.name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_block_count(n_layers)
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != hidden // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    vocab = int(config.get("vocab_size") or base.shape(base.embed_name or "")[0])
    writer.add_vocab_size(vocab)
    writer.add_file_type(int(gguf.LlamaFileType[_FILE_TYPES.get(mode, "MOSTLY_F16")]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    from compose.deploy.gguf_vocab import add_vocab

    add_vocab(writer, base, vocab)
    import numpy as np

    for _, gguf_name, shape, kind in order:
        writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), _nbytes(shape, kind), kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()

    # Pass 2: one tensor at a time, merged and encoded here while a thread writes the previous
    # ones (numpy's tofile releases the GIL). Quantizing is the bulk of the work and the writes
    # are light, so torch keeps every core here (leaving one to I/O was 15% slower).
    from concurrent.futures import Future, ThreadPoolExecutor

    pending: list[Future[None]] = []
    try:
        with exact_fp32(plan.device), ThreadPoolExecutor(1, thread_name_prefix="gguf-write") as io:
            for name, _, _shape, kind in order:
                if not name:
                    assert rope_factors is not None
                    data = _encode(rope_factors, kind)
                else:
                    data = _merged_encoded(plan, name, kind, _permuted_heads(name, arch, config))
                pending.append(io.submit(writer.write_tensor_data, data))
                while len(pending) > 2:  # bounded: at most two encoded tensors wait in memory
                    pending.pop(0).result()
                if progress is not None and name:
                    progress(plan.source(name).nbytes)
            for future in pending:
                future.result()
        assert writer.fout is not None
        for fout in writer.fout:
            fout.flush()
            os.fsync(fout.fileno())
    finally:
        writer.close()


def _permuted_heads(name: str, arch: GgufArch, config: dict[str, Any]) -> int | None:
    """The head count whose rows llama.cpp wants interleaved (q and k of ``llama``), or None."""
    if not arch.permute_qk:
        return None
    n_head = int(config["num_attention_heads"])
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        return n_head
    if name.endswith(("k_proj.weight", "k_proj.bias")):
        return int(config.get("num_key_value_heads") or n_head)
    return None


def _merged_encoded(plan: MergePlan, name: str, kind: Any, heads: int | None) -> np.ndarray:
    """Tensor ``name`` merged, rows permuted for ``heads`` (q/k), encoded as GGML ``kind``.

    Merged, permuted and quantized block by block (``merged_blocks``): memory holds the base
    tensor and its encoding, never a whole fp32 copy. Quantization is row-wise, so a block's
    encoded rows are placed straight at their permuted positions. On a GPU the whole tensor
    is merged, permuted and encoded there, and only its encoding comes back.
    """
    import torch

    data = read_tensor(plan.source(name))
    blocks = merged_blocks(plan, name, data)
    if blocks is None or data.ndim != 2:
        merged = merged_tensor(plan, name, data)
        tensor = merged if merged is not None else widened(plan, data)
        return _encode(permute_rows(tensor, heads) if heads else tensor, kind)
    rows = data.shape[0]
    dest = None
    if heads:
        order = permute_rows(torch.arange(rows), heads)  # output row i is source row order[i]
        dest = torch.empty_like(order)
        dest[order] = torch.arange(rows)
    out: torch.Tensor | None = None
    for block_rows, block in blocks:
        encoded = _encode_block(block, kind)
        if out is None:
            out = torch.empty((rows, encoded.shape[1]), dtype=encoded.dtype)
        if dest is None:
            out[block_rows] = encoded
        else:
            out.index_copy_(0, dest[block_rows], encoded)
    assert out is not None
    return out.numpy()


def _encode_block(block: torch.Tensor, kind: Any) -> torch.Tensor:
    """GGML encoding of fp32 rows: bytes for block types, values for float types."""
    import gguf
    import torch

    from compose.deploy import ggml_quants

    if kind.name in ggml_quants.TYPE_SIZES:
        return ggml_quants.quantize(block, kind.name)
    if kind == gguf.GGMLQuantizationType.F16:
        return block.to(torch.float16)
    if kind == gguf.GGMLQuantizationType.BF16:
        return block.to(torch.bfloat16).view(torch.int16)  # numpy has no bfloat16
    return block.clone()  # F32: the block buffer is reused


def _encode(tensor: torch.Tensor, kind: Any) -> np.ndarray:
    """GGML encoding of a whole fp32 tensor on any device (2-D as ``_encode_block``; 1-D
    tensors are F32), as a numpy array on the CPU."""
    import gguf

    if tensor.ndim == 2:
        return _encode_block(tensor, kind).cpu().numpy()
    return gguf.quants.quantize(tensor.contiguous().cpu().numpy(), kind)


def _llama_quantize(source: Path, dest: Path, quant: str) -> None:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params.nthread = max(1, min(4, os.cpu_count() or 1))
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(dest).encode(), ctypes.byref(params)
    )
    if status != 0 or not dest.is_file():
        raise InvalidArgument(f"llama.cpp could not quantize to {quant} (status {status})")
