"""The blob store interface: every file stored once, by its sha256.

A backend (``hub.blobstore.local``, ``hub.blobstore.s3``) implements the abstract
methods below; everything else in the hub reads and writes blobs only through them, never
through a path into the store. The rules every backend keeps:

- A blob is either complete and correct or absent: bytes become visible only once their
  sha256 is known to match (``BlobWriter.publish``), an aborted or mismatched write leaves
  nothing a reader can see, and publishing a digest that is already stored is harmless (the
  content is identical by construction).
- A digest is 64 lowercase hex digits; anything else is refused (``StoreCorrupted``) before it
  can name a location: digests come from the index and from HTTP requests.
- Reads of a missing blob raise ``StoreCorrupted`` naming the digest (``hub verify`` finds
  which versions it belongs to).

The sha256 is also the Git LFS oid the Hugging Face protocol speaks.
"""

from __future__ import annotations

import abc
import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path, PurePosixPath
from typing import IO, Any

from hub.progress import byte_progress
from schemas.errors import InvalidAdapter, StoreCorrupted

CHUNK = 8 * 1024 * 1024
"""Bytes per read when streaming a blob in or out."""
DIGEST = re.compile(r"[0-9a-f]{64}")


def read_buffer(size: int) -> bytearray:
    """A read buffer for a file of ``size`` bytes: a small file gets a small one (zeroing
    CHUNK bytes per file made hashing thousands of small files take seconds)."""
    return bytearray(min(CHUNK, size + 1))


def sha256_file(path: Path, progress: Any = None) -> str:
    """Stream ``path`` through sha256 and return the hex digest."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        buf = read_buffer(os.fstat(fh.fileno()).st_size)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            digest.update(view[:n])
            if progress is not None:
                progress.update(n)
    return digest.hexdigest()


def check_digest(digest: str) -> str:
    """``digest`` if it is 64 lowercase hex digits.

    Raises:
        StoreCorrupted: anything else (it would otherwise name a location in the store).
    """
    if not DIGEST.fullmatch(digest):
        raise StoreCorrupted(f"invalid blob digest {digest!r}", digest=digest)
    return digest


def missing(digest: str) -> StoreCorrupted:
    """The error for a blob the store should hold and does not."""
    return StoreCorrupted(
        f"blob {digest[:12]} is missing from the store (run `hub verify`)", digest=digest
    )


def corrupted(digest: str) -> StoreCorrupted:
    """The error for a blob whose bytes no longer hash to its digest."""
    return StoreCorrupted(
        f"blob {digest[:12]} is corrupted: its bytes no longer match their sha256"
        " (run `hub verify`)",
        digest=digest,
    )


def layout_path(folder: Path, relpath: str) -> Path:
    """Where file ``relpath`` of a materialized folder goes: inside ``folder``, always.

    Raises:
        InvalidAdapter: ``relpath`` is absolute or climbs out of ``folder``.
    """
    rel = PurePosixPath(relpath)
    target = (folder / relpath).resolve()
    if rel.is_absolute() or not relpath or not target.is_relative_to(folder.resolve()):
        raise InvalidAdapter(f"file path {relpath!r} escapes the folder")
    return target


class BlobWriter(abc.ABC):
    """One blob being written: bytes are hashed as they are written, and become a blob only
    through ``publish``, when they hash to ``expected`` (if given) and stay within ``limit``.
    Leaving the ``with`` block without publishing (an error, a client that hung up) discards
    everything written: nothing half-written is ever visible.

    Example:
        >>> with store.writer(expected=claimed_sha256, limit=1 << 30) as blob:  # doctest: +SKIP
        ...     for chunk in chunks:
        ...         blob.write(chunk)
        ...     digest, size = blob.publish()
    """

    def __init__(self, expected: str | None, limit: int | None) -> None:
        if expected is not None:
            check_digest(expected)
        self.expected, self.limit = expected, limit
        self.hasher = hashlib.sha256()
        self.size = 0
        self.published: tuple[str, int] | None = None

    def write(self, chunk: bytes | memoryview) -> None:
        """Append ``chunk``.

        Raises:
            InvalidArgument: the bytes written so far exceed ``limit`` (status 413).
        """
        from schemas.errors import InvalidArgument

        self.size += len(chunk)
        if self.limit is not None and self.size > self.limit:
            raise InvalidArgument(f"upload over {self.limit} bytes", status=413)
        self.hasher.update(chunk)
        self._write(chunk)

    def publish(self) -> tuple[str, int]:
        """Make the blob visible (durably); returns ``(sha256, size)``. When the store already
        holds the digest, nothing new is stored (and nothing is synced to disk).

        Raises:
            InvalidArgument: ``expected`` was given and the bytes hash to something else
                (nothing is stored).
        """
        from schemas.errors import InvalidArgument

        if self.published is not None:
            return self.published
        digest = self.hasher.hexdigest()
        if self.expected is not None and digest != self.expected:
            raise InvalidArgument(
                f"uploaded bytes hash to {digest[:12]}, not {self.expected[:12]}: refused"
            )
        self._publish(digest)
        self.published = (digest, self.size)
        return self.published

    @abc.abstractmethod
    def _write(self, chunk: bytes | memoryview) -> None:
        """Keep ``chunk`` where no reader sees it yet (already hashed and counted)."""

    @abc.abstractmethod
    def _publish(self, digest: str) -> None:
        """Make the bytes written the blob ``digest`` (verified), atomically and durably, or
        drop them when the store already holds ``digest``; release what the write held."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard what was written (a no-op once published, and when called twice)."""

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class BlobStore(abc.ABC):
    """Blobs addressed by sha256. Subclasses implement the abstract methods; the others are
    built on them (and may be overridden where a backend does better)."""

    location: str
    """Where the blobs are, for messages (a folder, ``s3://bucket/prefix``)."""
    remote: bool = False
    """Whether reads and writes go over the network (slow calls: keep them off an event
    loop, and batch them)."""

    # -- reading ---------------------------------------------------------------------------
    @abc.abstractmethod
    def has(self, digest: str) -> bool:
        """Whether blob ``digest`` is stored."""

    @abc.abstractmethod
    def size(self, digest: str) -> int:
        """The size in bytes of blob ``digest``.

        Raises:
            StoreCorrupted: the blob is missing (``missing(digest)``) or ``digest`` is invalid.
        """

    @abc.abstractmethod
    def open(self, digest: str, start: int = 0, end: int | None = None) -> IO[bytes]:
        """A readable binary stream over bytes ``[start, end)`` of blob ``digest`` (``end``
        None: to the end of the blob), for use in a ``with`` block. Not verified against the
        digest (``check`` and ``copy_out`` do that).

        Raises:
            StoreCorrupted: the blob is missing or ``digest`` is invalid.
        """

    def local_path(self, digest: str) -> Path | None:
        """A file on this machine holding blob ``digest``, for callers that hand a path to a
        library (the server's ``FileResponse``); None when the store keeps no such file (a
        remote store) or the blob is not stored. Read-only. Prefer ``open`` / ``size``."""
        return None

    def download_url(self, digest: str, expires: int) -> str | None:
        """A URL from which any client may GET blob ``digest`` (HTTP Range included) for the
        next ``expires`` seconds, without going through the hub: a presigned URL of an
        object store. None when the store has no such thing (the local store: the server
        sends the bytes itself). Not checked for existence (``has`` is)."""
        return None

    def read_bytes(self, digest: str) -> bytes:
        """The whole of blob ``digest`` (small blobs: records, per-example results)."""
        with self.open(digest) as fh:
            return fh.read()

    def copy_out(self, digest: str, dest: Path, *, description: str | None = None) -> None:
        """Write blob ``digest`` to ``dest``, checking the bytes against the digest on the way.

        Raises:
            StoreCorrupted: the blob is missing or its bytes no longer hash to ``digest``.
        """
        size = self.size(digest)
        bar = byte_progress(description or dest.name, size)
        hasher = hashlib.sha256()
        try:
            with self.open(digest) as fin, open(dest, "wb", buffering=0) as fout:
                while chunk := fin.read(CHUNK):
                    hasher.update(chunk)
                    fout.write(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
        if hasher.hexdigest() != digest:
            raise corrupted(digest)

    def check(self, digest: str) -> str | None:
        """None if the blob is intact, else ``"missing"`` or ``"corrupted"`` (re-hashed)."""
        if not self.has(digest):
            return "missing"
        hasher = hashlib.sha256()
        try:
            with self.open(digest) as fh:
                while chunk := fh.read(CHUNK):
                    hasher.update(chunk)
        except StoreCorrupted:
            return "missing"  # deleted meanwhile
        return None if hasher.hexdigest() == digest else "corrupted"

    @abc.abstractmethod
    def iter_digests(self) -> Iterator[str]:
        """Every digest stored, in no particular order."""

    # -- writing ---------------------------------------------------------------------------
    @abc.abstractmethod
    def writer(self, expected: str | None = None, limit: int | None = None) -> BlobWriter:
        """A ``BlobWriter`` for one new blob (see there): hashed as written, published only
        when the bytes hash to ``expected`` (when given) and stay within ``limit`` bytes.
        ``clear_tmp`` leaves a live writer's bytes alone."""

    def put_file(self, src: Path, *, description: str | None = None) -> tuple[str, int]:
        """Store the bytes of file ``src`` (hashing while storing); return ``(sha256, size)``.
        A content already stored stores nothing new. A link that ``materialize`` laid out is
        recognised where the backend can (``materialized_digest``) and not read again.

        Raises:
            InsufficientDiskSpace: the store is full (nothing was stored).
        """
        if (known := self.materialized_digest(src)) is not None:
            return known
        size = os.path.getsize(src)
        bar = byte_progress(description or Path(src).name, size)
        try:
            with open(src, "rb", buffering=0) as fin, self.writer() as blob:
                buf = read_buffer(size)
                view = memoryview(buf)
                while n := fin.readinto(buf):
                    blob.write(view[:n])
                    bar.update(n)
                return blob.publish()
        finally:
            bar.close()

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store ``data``; return ``(sha256, size)``."""
        digest = hashlib.sha256(data).hexdigest()
        if not self.has(digest):
            with self.writer(expected=digest) as blob:
                blob.write(data)
                blob.publish()
        return digest, len(data)

    @abc.abstractmethod
    def delete(self, digest: str) -> int:
        """Remove blob ``digest``; return the bytes freed (0 if it was not there). Callers
        (``hub gc``) hold the registry's store lock exclusively."""

    @abc.abstractmethod
    def clear_tmp(self) -> int:
        """Remove leftovers of interrupted writes and materializations that no live process
        holds (a live ``writer`` or ``materialize`` is left alone); return the bytes freed."""

    # -- files on disk ---------------------------------------------------------------------
    @abc.abstractmethod
    def materialize(
        self, files: Mapping[str, str], folder: Path | None = None
    ) -> AbstractContextManager[Path]:
        """A folder on this machine in which each ``files`` path (relative, ``/``-separated)
        reads as the bytes of its blob: for the operations that need files on disk (compose,
        export, load, compare, a server push's inspection). Read-only use.

        The local store lays out symlinks to its blobs (nothing is copied); a remote store
        fills a local cache first and links to that. With ``folder`` (which must not exist
        yet, inside the caller's scratch folder) the files are laid out there and stay after
        the block for the caller to remove; without, the store makes a scratch folder of its
        own and removes it at the end of the block.

        Args:
            files: relative path -> sha256.
            folder: where to lay the files out; None: a scratch folder of the store's.

        Returns:
            A context manager whose value is the folder.

        Raises:
            InvalidAdapter: a path escapes the folder. StoreCorrupted: a blob is missing (a
                backend that fetches checks here; the local store lays out the link, which
                then names a file that cannot be read, as a missing blob always has).

        Example:
            >>> with store.materialize({"adapter_config.json": d1, "w.safetensors": d2}) as f:
            ...     inspect_adapter(f)                                  # doctest: +SKIP
        """

    def materialized_roots(self) -> tuple[Path, ...]:
        """The folders the links ``materialize`` lays out point into (``hub.folders``
        trusts links into them when a materialized folder is pushed); () when it copies."""
        return ()

    def materialized_digest(self, path: Path) -> tuple[str, int] | None:
        """``(sha256, size)`` when ``path`` is a link ``materialize`` laid out to this
        store's blob (so pushing it stores nothing and need not read it), else None."""
        return None
