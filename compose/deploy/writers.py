"""Writing safetensors shards: tensor by tensor on a background thread, or by patching a copy.

``StreamWriter`` puts each tensor at its place in the file (the header fixes every offset up
front), from a bounded queue served by one thread, so the next tensor is merged while the
previous one is written. It either creates the file (header first, unchanged tensors copied
kernel-side) or patches a copy of a base shard whose layout the output keeps
(``StreamWriter.patching``): then only the tensors that change are written at all.

``ShardCopier`` makes those copies on its own thread, started before torch is even imported:
copying the base costs the disk's time, and the import (about 1.5 s) runs meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compose.deploy.stio import DTYPE_SIZES, TensorInfo, tensor_bytes
from schemas.errors import InvalidArgument

if TYPE_CHECKING:
    import torch

Job = Callable[[], None]


class StreamWriter:
    """One safetensors file, written tensor by tensor at known offsets.

    ``write`` and ``copy`` queue a tensor (any order, each once); ``close()`` checks every
    tensor came and queues the fsync; ``wait()`` joins and re-raises any error.

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
        header: dict[str, Any] = {}
        if metadata:
            header["__metadata__"] = metadata
        offset = 0
        sizes: dict[str, tuple[int, int]] = {}
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
            sizes[name] = (offset, size)
            offset += size
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        start = 8 + len(blob)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._setup(path, fd, {n: (start + o, size) for n, (o, size) in sizes.items()}, False)
        self.nbytes = start + offset
        head = struct.pack("<Q", len(blob)) + blob
        self._queue.put(lambda: self._pwrite(memoryview(head), 0))

    @classmethod
    def patching(cls, path: Path, tensors: dict[str, TensorInfo]) -> StreamWriter:
        """A writer over ``path``, an exact copy of the file ``tensors`` describe.

        ``write`` overwrites a tensor in place; ``copy`` leaves it as it is (it is there).
        """
        writer = cls.__new__(cls)
        fd = os.open(path, os.O_WRONLY)
        writer._setup(path, fd, {n: (i.start, i.nbytes) for n, i in tensors.items()}, True)
        writer.nbytes = os.fstat(fd).st_size
        return writer

    def _setup(
        self, path: Path, fd: int, slots: dict[str, tuple[int, int]], patching: bool
    ) -> None:
        self.path = path
        self._fd = fd
        self._slots = slots
        """Tensor name -> (absolute offset, size) still to be written."""
        self._patching = patching
        self._error: BaseException | None = None
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=2)
        # Not a daemon: a process that forgets wait() still finishes its writes before exiting.
        self._thread = threading.Thread(target=self._run, name=f"write {path.name}")
        self._thread.start()

    def _run(self) -> None:
        try:
            while (job := self._queue.get()) is not None:
                if self._error is None:
                    job()
        except BaseException as error:  # re-raised by wait()
            self._error = error
            while self._queue.get() is not None:
                pass  # drain: the producer must never block on a dead writer
        try:
            if self._error is None:
                os.fsync(self._fd)
        except OSError as error:  # ENOSPC, EIO... reported by wait()
            self._error = error
        finally:
            os.close(self._fd)

    def _slot(self, name: str, size: int) -> int:
        if self._error is not None:
            raise self._error
        if name not in self._slots:
            raise RuntimeError(f"{self.path}: tensor {name!r} is not in the header or came twice")
        offset, expected = self._slots.pop(name)
        if size != expected:
            raise RuntimeError(f"tensor {name!r}: {size} bytes, header says {expected}")
        return offset

    def write(
        self,
        name: str,
        data: torch.Tensor | bytes | memoryview,
        recycle: Callable[[torch.Tensor], None] | None = None,
    ) -> None:
        """Queue a tensor's bytes for its place in the file.

        ``recycle(tensor)`` is called on the writer thread once the bytes are written (to hand
        the buffer back to a ``BufferPool``).
        """
        raw = data if isinstance(data, bytes | memoryview) else tensor_bytes(data)
        offset = self._slot(name, len(raw))

        def job() -> None:
            self._pwrite(memoryview(raw).cast("B"), offset)
            if recycle is not None and not isinstance(data, bytes | memoryview):
                recycle(data)

        self._queue.put(job)

    def copy(self, name: str, info: TensorInfo) -> None:
        """Queue a tensor copied unchanged from ``info`` (kernel-side, never through memory)."""
        offset = self._slot(name, info.nbytes)
        if self._patching:
            self._queue.put(lambda: _start_writeback(self._fd, offset, info.nbytes))
        else:
            self._queue.put(lambda: self._copy(info, offset))

    def _pwrite(self, view: memoryview, offset: int) -> None:
        start, size = offset, len(view)
        while view:
            done = os.pwrite(self._fd, view, offset)
            view, offset = view[done:], offset + done
        _start_writeback(self._fd, start, size)

    def _copy(self, info: TensorInfo, offset: int) -> None:
        src = os.open(info.file, os.O_RDONLY)
        try:
            _copy_range(src, self._fd, info.start, offset, info.nbytes, info.file)
        finally:
            os.close(src)
        _start_writeback(self._fd, offset, info.nbytes)

    def close(self) -> None:
        """Check every tensor was queued; queue the fsync (``wait()`` for it)."""
        if self._slots:
            missing = next(iter(self._slots))
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


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing a range to disk without waiting for it.

    The kernel would otherwise keep everything in memory until the final ``fsync``, which then
    waits for the whole file; started tensor by tensor, the disk works while the next tensors
    are merged and the ``fsync`` finds little left. On Linux ``POSIX_FADV_DONTNEED`` starts
    writeback of the dirty range (its pages are dropped only once clean); elsewhere it is a
    harmless hint.
    """
    if nbytes and hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):  # a hint: never a reason to fail
            os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)


def _copy_range(
    src: int, dst: int, src_offset: int, dst_offset: int, nbytes: int, source: Path
) -> None:
    """Copy ``nbytes`` between two files at the given offsets, kernel-side when possible."""
    done = 0
    while done < nbytes:
        try:
            got = os.copy_file_range(src, dst, nbytes - done, src_offset + done, dst_offset + done)
        except OSError as error:
            if error.errno not in _NO_COPY_FILE_RANGE:
                raise
            size = min(nbytes - done, 8 << 20)
            got = _copy_through_memory(src, dst, src_offset + done, dst_offset + done, size)
        if got <= 0:
            raise InvalidArgument(f"{source}: truncated file while copying")
        done += got


# Across filesystems (EXDEV), or where the kernel or filesystem has no copy_file_range.
_NO_COPY_FILE_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


def _copy_through_memory(src: int, dst: int, src_offset: int, dst_offset: int, size: int) -> int:
    """One chunk copied with a read and a write (the fallback for ``copy_file_range``)."""
    data = os.pread(src, size, src_offset)
    view = memoryview(data)
    while view:
        written = os.pwrite(dst, view, dst_offset + len(data) - len(view))
        view = view[written:]
    return len(data)


class ShardCopier:
    """Copies files into ``folder`` on a background thread, kernel-side, while in its ``with``.

    ``copy_file_range`` moves the bytes inside the kernel (on filesystems with shared extents,
    such as Btrfs and XFS, it shares them instead of copying). Nothing is flushed here: the
    patching writer starts writeback of each range once it is final, so the tensors that
    change reach the disk once, with their new bytes.
    """

    CHUNK = 64 << 20

    def __init__(self, files: dict[str, Path], folder: Path) -> None:
        self._files = files
        """Name in ``folder`` (the index's shard name) -> file to copy."""
        self._folder = folder
        self._done = {name: threading.Event() for name in files}
        self._error: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="copy base", daemon=True)

    def __enter__(self) -> ShardCopier:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        try:
            for name, path in self._files.items():
                dest = self._folder / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "rb") as src, open(dest, "wb") as dst:
                    size, offset = os.fstat(src.fileno()).st_size, 0
                    while offset < size and not self._stopped:
                        chunk = min(self.CHUNK, size - offset)
                        _copy_range(src.fileno(), dst.fileno(), offset, offset, chunk, path)
                        offset += chunk
                if self._stopped:
                    return
                self._done[name].set()
        except BaseException as error:  # re-raised by wait()
            self._error = error
        finally:
            for event in self._done.values():
                event.set()

    def wait(self, name: str) -> Path:
        """The copy of file ``name``, once complete (re-raises a copy error)."""
        self._done[name].wait()
        if self._error is not None:
            raise self._error
        return self._folder / name

    def close(self) -> None:
        """Stop copying (on failure) or confirm it finished; joins the thread."""
        self._stopped = True
        if self._thread.is_alive():
            self._thread.join()
