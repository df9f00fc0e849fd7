"""Streaming safetensors I/O: read one tensor at a time, write a file tensor by tensor.

The safetensors library reads whole files (``load_file``) or memory-maps them (``safe_open``),
which counts every touched page as resident memory. Deploy reads each tensor with one
positioned read and writes each output tensor as soon as it is computed, so peak memory stays
about one tensor (plus the adapter), whatever the shard size.
"""

from __future__ import annotations

import json
import os
import queue
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.errors import InvalidArgument

if TYPE_CHECKING:
    import torch

DTYPE_SIZES: dict[str, int] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype string (``"BF16"`` -> ``torch.bfloat16``)."""
    import torch

    table = {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "F8_E4M3": torch.float8_e4m3fn,
        "F8_E5M2": torch.float8_e5m2,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "BOOL": torch.bool,
    }
    return table[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors dtype string of a torch dtype."""
    import torch

    table = {
        torch.float64: "F64",
        torch.float32: "F32",
        torch.float16: "F16",
        torch.bfloat16: "BF16",
        torch.float8_e4m3fn: "F8_E4M3",
        torch.float8_e5m2: "F8_E5M2",
        torch.int64: "I64",
        torch.int32: "I32",
        torch.int16: "I16",
        torch.int8: "I8",
        torch.uint8: "U8",
        torch.bool: "BOOL",
    }
    return table[dtype]


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in a safetensors file."""

    file: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    """Absolute byte offset of the data in the file."""
    nbytes: int

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith(("F", "BF"))


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """(tensors by name, ``__metadata__``) of a safetensors file, reading only its header.

    Raises:
        InvalidArgument: the file is not a readable safetensors file.
    """
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(fh.read(size))
    except (OSError, ValueError, struct.error) as error:
        raise InvalidArgument(f"{path}: not a readable safetensors file ({error})") from error
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + size
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        tensors[name] = TensorInfo(
            path, name, entry["dtype"], tuple(entry["shape"]), base + begin, end - begin
        )
    return tensors, metadata


def read_bytes(info: TensorInfo) -> bytes:  # small tensors only (whole read)
    """The raw bytes of one tensor (one positioned read)."""
    fd = os.open(info.file, os.O_RDONLY)
    try:
        data = os.pread(fd, info.nbytes, info.start)
    finally:
        os.close(fd)
    if len(data) != info.nbytes:
        raise InvalidArgument(f"{info.file}: truncated file (tensor {info.name})")
    return data


def read_tensor(info: TensorInfo) -> torch.Tensor:
    """One tensor as a fresh (writable) torch tensor, read straight into its memory."""
    import torch

    tensor = torch.empty(info.shape, dtype=torch_dtype(info.dtype))
    if info.nbytes:
        view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy().data)
        fd = os.open(info.file, os.O_RDONLY)
        try:
            done = 0
            while done < info.nbytes:
                got = os.preadv(fd, [view[done:]], info.start + done)
                if got <= 0:
                    raise InvalidArgument(f"{info.file}: truncated file (tensor {info.name})")
                done += got
        finally:
            os.close(fd)
    return tensor


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The little-endian bytes of a tensor, without a copy when it is contiguous."""
    import torch

    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy().data) if flat.numel() else memoryview(b"")


class StreamWriter:
    """Writes a safetensors file whose header is known up front, one tensor at a time.

    Writes happen on a background thread (bounded queue), so the next tensor is computed while
    the previous one is written; tensors copied unchanged go kernel-side (``copy_file_range``).
    ``close()`` queues the final fsync and returns; ``wait()`` joins and re-raises any error.

    Example:
        >>> w = StreamWriter(path, [("w", "F32", (2, 2))], {"format": "pt"})  # doctest: +SKIP
        >>> w.write("w", torch.zeros(2, 2)); w.close(); w.wait()             # doctest: +SKIP
    """

    def __init__(
        self,
        path: Path,
        entries: list[tuple[str, str, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.path = path
        header: dict[str, Any] = {}
        if metadata:
            header["__metadata__"] = metadata
        offset = 0
        self._expected: list[tuple[str, int]] = []
        for name, dtype, shape in entries:
            count = 1
            for dim in shape:
                count *= dim
            size = count * DTYPE_SIZES[dtype]
            header[name] = {
                "dtype": dtype,
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            self._expected.append((name, size))
            offset += size
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._next = 0
        self._error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=2)
        # Not a daemon: a process that forgets wait() still finishes its writes before exiting.
        self._thread = threading.Thread(target=self._run, name=f"write {path.name}")
        self._thread.start()
        self._queue.put(struct.pack("<Q", len(blob)) + blob)
        self.nbytes = 8 + len(blob) + offset

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                if self._error is not None:
                    continue  # aborted: drain
                if isinstance(item, TensorInfo):
                    self._copy(item)
                else:
                    view = memoryview(item).cast("B")
                    while view:
                        view = view[os.write(self._fd, view) :]
            if self._error is None:
                os.fsync(self._fd)
        except BaseException as error:  # re-raised by wait()
            self._error = error
            while self._queue.get() is not None:
                pass
        finally:
            os.close(self._fd)

    def _copy(self, info: TensorInfo) -> None:
        src = os.open(info.file, os.O_RDONLY)
        try:
            done = 0
            while done < info.nbytes:
                got = os.copy_file_range(src, self._fd, info.nbytes - done, info.start + done)
                if got <= 0:
                    raise InvalidArgument(f"{info.file}: truncated file (tensor {info.name})")
                done += got
        finally:
            os.close(src)

    def _check(self, name: str, size: int) -> None:
        if self._error is not None:
            raise self._error
        expected_name, expected = self._expected[self._next]
        if name != expected_name:
            raise RuntimeError(f"tensor {name!r} written out of order (expected {expected_name!r})")
        if size != expected:
            raise RuntimeError(f"tensor {name!r}: {size} bytes, header says {expected}")
        self._next += 1

    def write(self, name: str, data: torch.Tensor | bytes | memoryview) -> None:
        """Queue the next tensor; names must come in the order given to the constructor."""
        raw = data if isinstance(data, bytes | memoryview) else tensor_bytes(data)
        self._check(name, len(raw))
        self._queue.put(raw)

    def copy(self, name: str, info: TensorInfo) -> None:
        """Queue a tensor copied unchanged from a safetensors file (no trip through memory)."""
        self._check(name, info.nbytes)
        self._queue.put(info)

    def close(self) -> None:
        """Check every tensor was queued; queue the fsync (``wait()`` for it)."""
        if self._next != len(self._expected):
            missing = self._expected[self._next][0]
            self.abort()
            raise RuntimeError(f"{self.path}: tensor {missing!r} was never written")
        self._queue.put(None)

    def wait(self) -> None:
        """Block until the file is written and fsynced; re-raise a write error."""
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop writing (what was queued is dropped); the caller removes the file."""
        if self._thread.is_alive():
            self._error = self._error or RuntimeError("aborted")
            self._queue.put(None)
            self._thread.join()
