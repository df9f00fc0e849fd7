"""The local blob store under its old name (``hub.blobstore`` is the interface and its
backends; this module keeps ``from hub.store import BlobStore`` working for scripts)."""

from __future__ import annotations

from hub.blobstore.base import CHUNK, sha256_file
from hub.blobstore.local import LocalBlobStore as BlobStore

__all__ = ["CHUNK", "BlobStore", "sha256_file"]
