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
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "C64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1,
    "BOOL": 1,
}  # fmt: skip
"""Bytes per element of every whole-byte safetensors dtype (sub-byte F4/F6 are refused)."""

# IEEE types checked with numpy.isfinite (C64 is a pair of f32).
_IEEE_VIEW: dict[str, str] = {"F64": "<f8", "F32": "<f4", "C64": "<f4"}
# Other float types, tested on their bits: (unsigned view, mask, masked value meaning NaN/Inf).
_NONFINITE_BITS: dict[str, tuple[str, int, int]] = {
    "F16": ("<u2", 0x7C00, 0x7C00),  # exponent all ones
    "BF16": ("<u2", 0x7F80, 0x7F80),
    "F8_E4M3": ("u1", 0x7F, 0x7F),  # e4m3fn has no Inf; NaN is S.1111.111
    "F8_E5M2": ("u1", 0x7C, 0x7C),
    "F8_E8M0": ("u1", 0xFF, 0xFF),  # a bare exponent: only 0xFF (NaN) is not finite
}
_CHECK_CHUNK_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry.

    ``data_offsets`` is the ``[begin, end)`` byte range exactly as the header states it
    (relative to the data section); ``start`` / ``end`` are the same range as absolute file
    offsets, ready for seeking or memory-mapping.
    """

    key: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int
    data_offsets: tuple[int, int] = (0, 0)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate the header of the safetensors file ``path``.

    Checks everything the header promises against the file, without reading tensor data:
    the length prefix, the JSON, each entry's dtype / shape / offsets, that the byte ranges
    tile the data section exactly (no overlap, no gap, nothing after) and that the file is
    long enough.

    Args:
        path: a ``.safetensors`` file.

    Returns:
        ``(tensors, metadata)``: the entries by tensor key, and ``__metadata__`` (empty when
        absent).

    Raises:
        InvalidAdapter: one line naming the file (and the tensor key where there is one), e.g.
            ``adapter_model.safetensors is truncated: its header says 9216 bytes of tensor
            data, the file has 8216``.

    Example:
        >>> tensors, meta = read_safetensors_header(Path("adapter_model.safetensors"))
        ... # doctest: +SKIP
        >>> info = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
        >>> info.dtype, info.shape, info.data_offsets
        ('F32', (8, 4096), (0, 131072))
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
    except (ValueError, RecursionError):
        # ValueError covers bad UTF-8, bad JSON and over-long integer literals; RecursionError
        # a malicious nesting of brackets.
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
    needed = max((t.data_offsets[1] for t in tensors.values()), default=0)
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
    if not isinstance(dtype, str) or dtype not in ITEMSIZE:
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
    begin, end = offsets
    expected = math.prod(shape) * ITEMSIZE[dtype]
    if end - begin != expected:
        raise InvalidAdapter(
            f"{name} is corrupt: tensor {key!r} has {end - begin} bytes of data"
            f" but shape {tuple(shape)} in {dtype} needs {expected}"
        )
    return TensorInfo(key, dtype, tuple(shape), data_start + begin, data_start + end, (begin, end))


def find_nonfinite(path: Path, tensors: dict[str, TensorInfo]) -> str | None:
    """The key of the first float tensor holding a NaN or Inf, or None.

    Reads the file through memory maps of 16 MiB windows, so memory stays flat for any size.
    F64/F32 (and C64) use ``numpy.isfinite``; F16, BF16 and the 8-bit floats are tested on
    their exponent bits, with no conversion. Integer and bool tensors are skipped.
    """
    import numpy as np

    floats = [t for t in tensors.values() if t.dtype in (*_IEEE_VIEW, *_NONFINITE_BITS)]
    for info in sorted((t for t in floats if t.nbytes), key=lambda t: t.start):
        step = _CHECK_CHUNK_BYTES - _CHECK_CHUNK_BYTES % ITEMSIZE[info.dtype]
        for offset in range(info.start, info.end, step):
            # One short-lived map per window: its pages are released when it goes, so the
            # resident size stays at one window however large the file is.
            window = np.memmap(
                path, dtype=np.uint8, mode="r", offset=offset, shape=(min(step, info.end - offset),)
            )
            try:
                if info.dtype in _IEEE_VIEW:
                    bad = not np.isfinite(window.view(_IEEE_VIEW[info.dtype])).all()
                else:
                    view, mask, value = _NONFINITE_BITS[info.dtype]
                    bad = bool(((window.view(view) & mask) == value).any())
            finally:
                del window
            if bad:
                return info.key
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
