"""Read and check a safetensors file without torch: the header, and NaN/Inf on raw bits.

Format: 8 bytes little-endian header length N, N bytes of JSON (tensor name -> dtype, shape,
data_offsets relative to the data section, plus an optional ``__metadata__``), then the data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.errors import InvalidAdapter

MAX_HEADER_BYTES = 100 * 1024 * 1024

ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip

# For each float dtype: (unsigned view, mask, value that means NaN/Inf when masked).
_NONFINITE_BITS: dict[str, tuple[str, int, int]] = {
    "F16": ("<u2", 0x7C00, 0x7C00),
    "BF16": ("<u2", 0x7F80, 0x7F80),
    "F8_E4M3": ("u1", 0x7F, 0x7F),  # e4m3fn has no Inf; NaN is S.1111.111
    "F8_E5M2": ("u1", 0x7C, 0x7C),
}
_CHECK_CHUNK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry: dtype, shape and its absolute byte range in the file."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate the header of ``path``; return (tensors by key, ``__metadata__``).

    Every inconsistency (truncation, bad JSON, unknown dtype, offsets that overlap, leave holes
    or disagree with the shape) raises ``InvalidAdapter`` naming the file and the tensor.

    Example:
        >>> tensors, meta = read_safetensors_header(Path("w.safetensors"))  # doctest: +SKIP
        >>> tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape
        (8, 4096)
    """
    name = path.name
    size = path.stat().st_size
    if size < 8:
        raise InvalidAdapter(f"{name} is truncated: {size} bytes, too short for a header")
    with open(path, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        if header_len > MAX_HEADER_BYTES or header_len > size - 8:
            raise InvalidAdapter(
                f"{name} is corrupt or truncated: its header claims {header_len} bytes,"
                f" the file has {size}"
            )
        raw = fh.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidAdapter(f"{name} is corrupt: its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise InvalidAdapter(f"{name} is corrupt: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise InvalidAdapter(f"{name} is corrupt: __metadata__ is not a JSON object")
    data_start = 8 + header_len
    data_len = size - data_start
    tensors: dict[str, TensorInfo] = {}
    for key, entry in header.items():
        tensors[key] = _tensor_info(name, key, entry, data_start)
    needed = max((t.end - data_start for t in tensors.values()), default=0)
    if needed > data_len:
        raise InvalidAdapter(
            f"{name} is truncated: its header says {needed} bytes of tensor data,"
            f" the file has {data_len}"
        )
    position = data_start
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.start != position:
            problem = "overlaps another tensor" if info.start < position else "leaves a gap"
            raise InvalidAdapter(f"{name} is corrupt: tensor {info.key!r} {problem}")
        position = info.end
    if position != size:
        raise InvalidAdapter(
            f"{name} is corrupt: {size - position} bytes after the last tensor's data"
        )
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def _tensor_info(name: str, key: str, entry: Any, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise InvalidAdapter(f"{name} is corrupt: entry {key!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in ITEMSIZE:
        raise InvalidAdapter(f"{name}: tensor {key!r} has unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidAdapter(f"{name} is corrupt: tensor {key!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise InvalidAdapter(
            f"{name} is corrupt: tensor {key!r} has invalid data_offsets {offsets!r}"
        )
    expected = math.prod(shape) * ITEMSIZE[dtype]
    if offsets[1] - offsets[0] != expected:
        raise InvalidAdapter(
            f"{name} is corrupt: tensor {key!r} has {offsets[1] - offsets[0]} bytes of data"
            f" but shape {tuple(shape)} in {dtype} needs {expected}"
        )
    return TensorInfo(key, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def find_nonfinite(path: Path, tensors: dict[str, TensorInfo]) -> str | None:
    """The key of the first float tensor holding a NaN or Inf, or None.

    Reads the file through a memory map in 64 MiB windows, so memory stays flat for any size;
    half and 8-bit floats are tested on their exponent bits (no conversion needed).
    """
    import numpy as np

    floats = [t for t in tensors.values() if t.dtype in ("F64", "F32", *_NONFINITE_BITS)]
    if not floats:
        return None
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        for info in sorted(floats, key=lambda t: t.start):
            step = _CHECK_CHUNK_BYTES - _CHECK_CHUNK_BYTES % ITEMSIZE[info.dtype]
            for offset in range(info.start, info.end, step):
                window = mapped[offset : min(offset + step, info.end)]
                if info.dtype in ("F64", "F32"):
                    values = window.view("<f8" if info.dtype == "F64" else "<f4")
                    if not np.isfinite(values).all():
                        return info.key
                else:
                    view, mask, bad = _NONFINITE_BITS[info.dtype]
                    if ((window.view(view) & mask) == bad).any():
                        return info.key
    finally:
        del mapped
    return None


def read_small_tensor(path: Path, info: TensorInfo) -> Any:
    """A small tensor's values as a float64 numpy array (for AdaLoRA's singular values)."""
    import numpy as np

    with open(path, "rb") as fh:
        fh.seek(info.start)
        raw = fh.read(info.nbytes)
    if info.dtype == "BF16":
        values = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    elif info.dtype in ("F64", "F32", "F16"):
        values = np.frombuffer(raw, {"F64": "<f8", "F32": "<f4", "F16": "<f2"}[info.dtype])
    else:
        raise InvalidAdapter(f"{path.name}: tensor {info.key!r} has unexpected dtype {info.dtype}")
    return values.astype(np.float64).reshape(info.shape)
