"""Content-addressed blob store: every file stored once, by its sha256.

Layout under the store root::

    blobs/sha256/ab/abcdef...    one file per distinct content (the digest is the name)
    tmp/                         in-flight writes, each locked by its writer (``open_temp``);
                                 one no writer holds is a crash's leftover, garbage

Writes go to ``tmp/`` first, are fsynced, then renamed into place, so a blob path either
holds the complete, correct bytes or does not exist. Renaming over an existing blob is
harmless: the content is identical by construction. The sha256 is also the Git LFS oid the
Hugging Face protocol speaks.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from compose.staging import fsync_dir
from hub.locks import hold_file, try_hold_file
from hub.progress import byte_progress
from schemas.errors import InsufficientDiskSpace, StoreCorrupted

CHUNK = 8 * 1024 * 1024
# Out of space, over quota, or over the process's file-size limit: the disk is "full" for us.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DIGEST = re.compile(r"[0-9a-f]{64}")


def _buffer(size: int) -> bytearray:
    """A read buffer for a file of ``size`` bytes: a small file gets a small one (zeroing
    CHUNK bytes per file made hashing thousands of small files take seconds)."""
    return bytearray(min(CHUNK, size + 1))


def sha256_file(path: Path, progress: Any = None) -> str:
    """Stream ``path`` through sha256 and return the hex digest."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        buf = _buffer(os.fstat(fh.fileno()).st_size)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            digest.update(view[:n])
            if progress is not None:
                progress.update(n)
    return digest.hexdigest()


class BlobStore:
    """Blobs addressed by sha256 under ``root``.

    Example:
        >>> store = BlobStore(tmp / "store")                       # doctest: +SKIP
        >>> digest, size = store.put_file(Path("adapter_model.safetensors"))  # doctest: +SKIP
        >>> store.path(digest).read_bytes() == Path("adapter_model.safetensors").read_bytes()
        True
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.tmp = self.root / "tmp"

    def path(self, digest: str) -> Path:
        """Where the blob with ``digest`` lives (it may not exist)."""
        if not _DIGEST.fullmatch(digest):
            # Digests reach here from the index and, later, from HTTP requests: never let one
            # name a path outside the store.
            raise StoreCorrupted(f"invalid blob digest {digest!r}", digest=digest)
        return self.blobs / digest[:2] / digest

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

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
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        fsync_dir(final.parent)

    def put_file(self, src: Path, *, description: str | None = None) -> tuple[str, int]:
        """Copy ``src`` into the store (hashing while copying); return ``(sha256, size)``.

        One read of the source, one write of the copy: the digest is computed on the bytes
        as they are written, so what is stored is exactly what was hashed. A content already
        stored costs a read and a discarded write, and stores nothing new.
        """
        size = os.path.getsize(src)
        tmp, fout = self.open_temp(buffering=0)
        digest = hashlib.sha256()
        bar = byte_progress(description or Path(src).name, size)
        try:
            with open(src, "rb", buffering=0) as fin, fout:
                buf = _buffer(size)
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
        """Store ``data``; return ``(sha256, size)``."""
        hexdigest = hashlib.sha256(data).hexdigest()
        if not self.has(hexdigest):
            tmp, fh = self.open_temp()
            with fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
                self.publish(tmp, hexdigest)
        return hexdigest, len(data)

    def copy_out(self, digest: str, dest: Path, *, description: str | None = None) -> None:
        """Write blob ``digest`` to ``dest``, checking the bytes against the digest on the way.

        Raises:
            StoreCorrupted: the blob is missing or its bytes no longer hash to ``digest``.
        """
        src = self.path(digest)
        if not src.is_file():
            raise StoreCorrupted(
                f"blob {digest[:12]} is missing from the store (run `hub verify`)", digest=digest
            )
        size = src.stat().st_size
        bar = byte_progress(description or dest.name, size)
        hasher = hashlib.sha256()
        try:
            with open(src, "rb", buffering=0) as fin, open(dest, "wb", buffering=0) as fout:
                buf = _buffer(size)
                view = memoryview(buf)
                while n := fin.readinto(buf):
                    hasher.update(view[:n])
                    fout.write(view[:n])
                    bar.update(n)
        finally:
            bar.close()
        if hasher.hexdigest() != digest:
            raise StoreCorrupted(
                f"blob {digest[:12]} is corrupted: its bytes no longer match their sha256"
                " (run `hub verify`)",
                digest=digest,
            )

    def check(self, digest: str) -> str | None:
        """Return None if the blob is intact, else ``"missing"`` or ``"corrupted"``."""
        path = self.path(digest)
        if not path.is_file():
            return "missing"
        return None if sha256_file(path) == digest else "corrupted"

    def iter_digests(self) -> Iterator[str]:
        """Every digest present in the store."""
        if not self.blobs.is_dir():
            return
        for shard in self.blobs.iterdir():
            if shard.is_dir():
                for blob in shard.iterdir():
                    if _DIGEST.fullmatch(blob.name):
                        yield blob.name

    def delete(self, digest: str) -> int:
        """Remove a blob; return the bytes freed (0 if it was not there)."""
        path = self.path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def clear_tmp(self) -> int:
        """Remove leftovers of interrupted writes: the temp files no live writer holds
        (``open_temp``). Returns the bytes freed."""
        freed = 0
        if self.tmp.is_dir():
            for leftover in self.tmp.iterdir():
                with contextlib.suppress(OSError), open(leftover, "rb") as fh:
                    if try_hold_file(fh.fileno()):
                        freed += os.fstat(fh.fileno()).st_size
                        leftover.unlink()
        return freed
