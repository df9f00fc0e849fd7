"""Where blobs live: one interface (``BlobStore``), one module per backend.

``open_store(url, home)`` picks the backend from the store URL (``--store`` /
``HUB_STORE_URL``); without one, the embedded registry's folder ``home/store``.

Example:
    >>> store = open_store(None, Path("~/.local/share/hub").expanduser())   # doctest: +SKIP
    >>> digest, size = store.put_bytes(b"hello")                             # doctest: +SKIP
    >>> with store.open(digest, 1, 3) as fh:                                 # doctest: +SKIP
    ...     fh.read()
    b'el'
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from hub.blobstore.base import CHUNK, BlobStore, BlobWriter, sha256_file
from schemas.errors import InvalidArgument

__all__ = ["BACKENDS", "CHUNK", "BlobStore", "BlobWriter", "open_store", "sha256_file"]


def _local(url: str, home: Path) -> BlobStore:
    from hub.blobstore.local import LocalBlobStore

    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise InvalidArgument(
            f"--store {url!r}: a file:// store URL names an absolute folder (file:///srv/blobs)"
        )
    return LocalBlobStore(Path(parts.path))


def _s3(url: str, home: Path) -> BlobStore:
    from hub.blobstore.s3 import open_s3

    return open_s3(url, home)


BACKENDS: dict[str, Callable[[str, Path], BlobStore]] = {"file": _local, "s3": _s3}
"""URL scheme -> the function that opens a store of that kind (``url``, registry ``home``);
each backend module is imported only when its scheme is used."""


def open_store(url: str | None, home: Path) -> BlobStore:
    """The blob store named by ``url`` (``--store`` / ``HUB_STORE_URL``), for the registry in
    ``home`` (where a remote store keeps its local cache).

    Args:
        url: ``None`` (or empty): the embedded folder ``home/store``; ``file:///DIR``: a
            folder elsewhere; other schemes as ``BACKENDS`` lists.
        home: the registry folder (``--home`` / ``HUB_HOME``).

    Raises:
        InvalidArgument: an unknown scheme, naming the option and the schemes known.
    """
    if not url:
        from hub.blobstore.local import LocalBlobStore

        return LocalBlobStore(Path(home) / "store")
    scheme = urlsplit(url).scheme.lower()
    opener = BACKENDS.get(scheme)
    if opener is None:
        known = ", ".join(f"{name}://" for name in sorted(BACKENDS))
        raise InvalidArgument(
            f"--store {url!r} (or HUB_STORE_URL): unknown store scheme {scheme or url!r};"
            f" known: {known}, or leave it unset for the folder under --home"
        )
    return opener(url, Path(home))
