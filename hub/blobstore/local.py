"""The local blob store: a folder on this machine (the embedded registry's ``store/``).

Layout under the store root::

    blobs/sha256/ab/abcdef...    one file per distinct content (the digest is the name)
    tmp/                         in-flight writes, each locked by its writer (``open_temp``);
                                 one no writer holds is a crash's leftover, garbage;
                                 ``materialize-*`` folders of links, locked while in use

Writes go to ``tmp/`` first, are fsynced, then renamed into place, so a blob path either
holds the complete, correct bytes or does not exist. Renaming over an existing blob is
harmless: the content is identical by construction.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from compose.staging import fsync_dir, sweep, work_folder
from hub.blobstore.base import (
    DIGEST,
    BlobStore,
    BlobWriter,
    check_digest,
    corrupted,
    layout_path,
    missing,
    read_buffer,
    sha256_file,
)
from hub.locks import hold_file, try_hold_file
from hub.progress import byte_progress
from schemas.errors import InsufficientDiskSpace

# Out of space, over quota, or over the process's file-size limit: the disk is "full" for us.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_MATERIALIZED = "materialize"


class _Window(io.RawIOBase):
    """Bytes ``[start, end)`` of an open file, as a stream of their own."""

    def __init__(self, fh: IO[bytes], start: int, end: int) -> None:
        self._fh, self._left = fh, max(0, end - start)
        fh.seek(start)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")[: self._left]
        n = self._fh.readinto(view) if view.nbytes else 0  # type: ignore[attr-defined]
        self._left -= n or 0
        return n or 0

    def close(self) -> None:
        self._fh.close()
        super().close()


class LocalBlobWriter(BlobWriter):
    """A write into ``tmp/``: the temp file is locked for as long as it is open, so
    ``clear_tmp`` (``gc``) leaves it alone; renamed into ``blobs/`` on publish."""

    def __init__(self, store: LocalBlobStore, expected: str | None, limit: int | None) -> None:
        super().__init__(expected, limit)
        self.store = store
        self.tmp, self._fh = store.open_temp()

    def _write(self, chunk: bytes | memoryview) -> None:
        self._fh.write(chunk)

    def _publish(self, digest: str) -> None:
        if self.store.has(digest):
            # Stored already (durably, when it was published): nothing to sync or keep.
            self.tmp.unlink()
        else:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self.store.publish(self.tmp, digest)
        self._fh.close()  # only now: the open file is what keeps `gc` off the temp file

    def abort(self) -> None:
        self._fh.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()  # gone already when published


class LocalBlobStore(BlobStore):
    """Blobs addressed by sha256 under the folder ``root``.

    Example:
        >>> store = LocalBlobStore(tmp / "store")                       # doctest: +SKIP
        >>> digest, size = store.put_file(Path("adapter_model.safetensors"))  # doctest: +SKIP
        >>> with store.open(digest) as fh:                               # doctest: +SKIP
        ...     fh.read() == Path("adapter_model.safetensors").read_bytes()
        True
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.tmp = self.root / "tmp"
        self.location = str(self.root)

    # -- this backend's own: paths ---------------------------------------------------------
    def path(self, digest: str) -> Path:
        """Where the blob with ``digest`` lives (it may not exist). Only this backend has
        paths: code outside the store uses the ``BlobStore`` methods."""
        # Digests reach here from the index and from HTTP requests: never let one name a
        # path outside the store.
        return self.blobs / check_digest(digest)[:2] / digest

    def local_path(self, digest: str) -> Path | None:
        path = self.path(digest)
        return path if path.is_file() else None

    def temp_path(self) -> Path:
        self.tmp.mkdir(parents=True, exist_ok=True)
        return self.tmp / f"{uuid.uuid4().hex}.incomplete"

    def open_temp(self, buffering: int = -1) -> tuple[Path, IO[bytes]]:
        """A new temp file, open for writing and locked by this writer until it is closed:
        ``clear_tmp`` (``gc``) leaves it alone while the writer lives. Keep it open until
        the blob is published."""
        while True:
            path = self.temp_path()
            fh = open(path, "xb", buffering=buffering)  # noqa: SIM115 (the caller closes it)
            hold_file(fh.fileno())
            try:
                # clear_tmp may have taken the file between its creation and our lock.
                if os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino:
                    return path, fh
            except FileNotFoundError:
                pass
            fh.close()

    def publish(self, tmp: Path, digest: str) -> None:
        """Rename the complete, synced temp file ``tmp`` to the blob ``digest``."""
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        fsync_dir(final.parent)

    # -- reading ---------------------------------------------------------------------------
    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise missing(digest) from None

    def open(self, digest: str, start: int = 0, end: int | None = None) -> IO[bytes]:
        try:
            fh = open(self.path(digest), "rb")  # noqa: SIM115 (the caller closes it)
        except FileNotFoundError:
            raise missing(digest) from None
        if start == 0 and end is None:
            return fh
        if end is None:
            fh.seek(start)
            return fh
        return io.BufferedReader(_Window(fh, start, end))

    def copy_out(self, digest: str, dest: Path, *, description: str | None = None) -> None:
        src = self.path(digest)
        if not src.is_file():
            raise missing(digest)
        size = src.stat().st_size
        bar = byte_progress(description or dest.name, size)
        hasher = hashlib.sha256()
        try:
            with open(src, "rb", buffering=0) as fin, open(dest, "wb", buffering=0) as fout:
                buf = read_buffer(size)
                view = memoryview(buf)
                while n := fin.readinto(buf):
                    hasher.update(view[:n])
                    fout.write(view[:n])
                    bar.update(n)
        finally:
            bar.close()
        if hasher.hexdigest() != digest:
            raise corrupted(digest)

    def check(self, digest: str) -> str | None:
        path = self.path(digest)
        if not path.is_file():
            return "missing"
        return None if sha256_file(path) == digest else "corrupted"

    def iter_digests(self) -> Iterator[str]:
        if not self.blobs.is_dir():
            return
        for shard in self.blobs.iterdir():
            if shard.is_dir():
                for blob in shard.iterdir():
                    if DIGEST.fullmatch(blob.name):
                        yield blob.name

    # -- writing ---------------------------------------------------------------------------
    def writer(self, expected: str | None = None, limit: int | None = None) -> LocalBlobWriter:
        return LocalBlobWriter(self, expected, limit)

    def put_file(self, src: Path, *, description: str | None = None) -> tuple[str, int]:
        """Copy ``src`` into the store (hashing while copying); return ``(sha256, size)``.

        One read of the source, one write of the copy: the digest is computed on the bytes
        as they are written, so what is stored is exactly what was hashed. A content already
        stored costs a read and a discarded write, and stores nothing new; a link to one of
        this store's blobs (a materialized folder, the server's staged pushes) costs nothing.
        """
        if (known := self.materialized_digest(src)) is not None:
            return known
        size = os.path.getsize(src)
        tmp, fout = self.open_temp(buffering=0)
        digest = hashlib.sha256()
        bar = byte_progress(description or Path(src).name, size)
        try:
            with open(src, "rb", buffering=0) as fin, fout:
                buf = read_buffer(size)
                view = memoryview(buf)
                while n := fin.readinto(buf):
                    chunk = view[:n]
                    digest.update(chunk)
                    fout.write(chunk)
                    bar.update(n)
                fout.flush()
                os.fsync(fout.fileno())
                hexdigest = digest.hexdigest()
                if self.has(hexdigest):
                    tmp.unlink()
                else:
                    self.publish(tmp, hexdigest)
            return hexdigest, size
        except OSError as error:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if error.errno in _NO_SPACE:
                raise InsufficientDiskSpace(
                    f"no space left in the store {self.root} while storing {src}: free space"
                    " there and push again (nothing was registered)",
                    path=str(self.root),
                ) from error
            raise
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        finally:
            bar.close()

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        hexdigest = hashlib.sha256(data).hexdigest()
        if not self.has(hexdigest):
            tmp, fh = self.open_temp()
            with fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
                self.publish(tmp, hexdigest)
        return hexdigest, len(data)

    def delete(self, digest: str) -> int:
        path = self.path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def clear_tmp(self) -> int:
        """Remove leftovers of interrupted writes (the temp files no live writer holds:
        ``open_temp``) and abandoned ``materialize`` folders. Returns the bytes freed."""
        freed = 0
        if self.tmp.is_dir():
            for leftover in self.tmp.iterdir():
                if leftover.name.startswith(f"{_MATERIALIZED}-"):
                    continue
                with contextlib.suppress(OSError), open(leftover, "rb") as fh:
                    if try_hold_file(fh.fileno()):
                        freed += os.fstat(fh.fileno()).st_size
                        leftover.unlink()
            sweep(self.tmp, lambda name: name.startswith(f"{_MATERIALIZED}-"))
        return freed

    # -- files on disk ---------------------------------------------------------------------
    @contextlib.contextmanager
    def materialize(self, files: Mapping[str, str], folder: Path | None = None) -> Iterator[Path]:
        """Symlinks to the blobs (nothing is copied); see ``BlobStore.materialize``."""
        if folder is not None:
            yield self._link(files, folder)
            return
        with work_folder(self.tmp, _MATERIALIZED) as scratch:
            yield self._link(files, scratch / "files")

    def _link(self, files: Mapping[str, str], folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for relpath, digest in files.items():
            link = layout_path(folder, relpath)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(self.path(digest))
        return folder

    def materialized_roots(self) -> tuple[Path, ...]:
        return (self.blobs,)

    def materialized_digest(self, path: Path) -> tuple[str, int] | None:
        if not os.path.islink(path):
            return None
        real = Path(os.path.realpath(path))
        blobs = Path(os.path.realpath(self.blobs))
        if not DIGEST.fullmatch(real.name) or real != blobs / real.name[:2] / real.name:
            return None
        try:
            return real.name, real.stat().st_size
        except FileNotFoundError:
            return None
