"""Reading safetensors one tensor at a time: headers, positioned reads, buffers, read-ahead.

The safetensors library reads whole files (``load_file``) or memory-maps them (``safe_open``),
which counts every touched page as resident memory. Deploy reads each tensor with one
positioned read into a pooled buffer, ahead of its use on a thread, so peak memory stays a few
tensors (plus the adapter), whatever the shard size. Writing is in ``writers.py``.
"""

from __future__ import annotations

import contextlib
import json
import mmap
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


def read_tensor(info: TensorInfo, into: torch.Tensor | None = None) -> torch.Tensor:
    """One tensor as a writable torch tensor, read straight into its memory (``into`` when
    given: an empty tensor of the right dtype and shape, e.g. from a ``BufferPool``)."""
    import torch

    tensor = into if into is not None else torch.empty(info.shape, dtype=torch_dtype(info.dtype))
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


class BufferPool:
    """Reuses the buffers base tensors are read into.

    Every 4 KiB page of a fresh buffer faults and is zeroed on first touch, which cost about as
    much as reading the bytes from the page cache. Buffers go back to the pool once their
    tensor is written (``StreamWriter.write(..., recycle=pool.give)``); at most ``keep`` idle
    buffers are held, so the peak stays a few tensors. They are mapped directly (anonymous
    ``mmap``), not taken from malloc: glibc keeps freed blocks of this size in its heap for
    reuse, which added 70-150 MiB to an export's peak memory.
    """

    def __init__(self, keep: int = 3) -> None:
        self._keep = keep
        self._idle: list[torch.Tensor] = []
        self._ours: set[int] = set()
        self._lock = threading.Lock()

    def empty(self, info: TensorInfo) -> torch.Tensor:
        """An uninitialised tensor of ``info``'s dtype and shape, reused when one is idle."""
        import torch

        with self._lock:
            for i, raw in enumerate(self._idle):
                if raw.numel() == info.nbytes:
                    del self._idle[i]
                    break
            else:
                if not info.nbytes:
                    return torch.empty(info.shape, dtype=torch_dtype(info.dtype))
                # The tensor holds a reference to the mapping; unmapped when both are gone.
                raw = torch.frombuffer(mmap.mmap(-1, info.nbytes), dtype=torch.uint8)
                self._ours.add(raw.data_ptr())
        return raw.view(torch_dtype(info.dtype)).view(info.shape)

    def give(self, tensor: torch.Tensor) -> None:
        """Return a tensor from ``empty`` (others are ignored); the oldest idle one is freed."""
        import torch

        if tensor.untyped_storage().data_ptr() not in self._ours:
            return
        raw = tensor.reshape(-1).view(torch.uint8)
        with self._lock:
            self._idle.append(raw)
            if len(self._idle) > self._keep:
                self._ours.discard(self._idle.pop(0).data_ptr())


class Prefetcher:
    """Reads tensors in order on a background thread, ``depth`` ahead of their use.

    The positioned reads release the GIL, so reading the next tensor overlaps the merge of the
    current one. Tensors come from ``pool``; the consumer gives them back.
    """

    def __init__(self, infos: list[TensorInfo], pool: BufferPool, depth: int = 2) -> None:
        self._infos = infos
        self._pool = pool
        self._stopped = False
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for info in self._infos:
            if self._stopped:
                return
            try:
                item: Any = read_tensor(info, into=self._pool.empty(info))
            except BaseException as error:  # re-raised in the consumer by next()
                item = error
            self._queue.put(item)
            if isinstance(item, BaseException):
                return

    def next(self) -> torch.Tensor:
        """The next tensor, in the order given (re-raises a read error)."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop reading; what was read ahead is dropped."""
        self._stopped = True
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)


class ReadAhead:
    """Asks the kernel to read files ahead of their use, a bounded window at a time.

    Started before torch is imported, it overlaps reading the first shards from disk with that
    import (about 1.5 s); then it stays ``window`` bytes ahead of what the caller reports as
    consumed (``advance``), so the merge finds its bytes in the page cache while the disk
    fetches what comes next. Only hints (``POSIX_FADV_WILLNEED``): nothing is held in memory
    by this process, and the kernel may drop them under memory pressure.
    """

    CHUNK = 64 << 20

    def __init__(self, files: list[Path], window: int = 768 << 20) -> None:
        self._files = files
        self._window = window
        self._consumed = 0
        self._issued = 0
        self._stopped = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        if hasattr(os, "posix_fadvise"):
            self._thread = threading.Thread(target=self._run, name="read-ahead", daemon=True)
            self._thread.start()

    def advance(self, nbytes: int) -> None:
        """The caller has used ``nbytes`` more of the files (in order)."""
        with self._cond:
            self._consumed += nbytes
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _may_issue(self) -> bool:
        return self._stopped or self._issued - self._consumed < self._window

    def _run(self) -> None:
        for path in self._files:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # reported by whoever reads it
            try:
                size, offset = os.fstat(fd).st_size, 0
                while offset < size:
                    with self._cond:
                        self._cond.wait_for(self._may_issue)
                        if self._stopped:
                            return
                    chunk = min(self.CHUNK, size - offset)
                    os.posix_fadvise(fd, offset, chunk, os.POSIX_FADV_WILLNEED)
                    offset += chunk
                    self._issued += chunk
            except OSError:
                return  # a hint only
            finally:
                os.close(fd)


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The little-endian bytes of a tensor, without a copy when it is contiguous."""
    import torch

    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy().data) if flat.numel() else memoryview(b"")
