"""The S3 blob store: a bucket of any S3-compatible object store (AWS S3, MinIO, SeaweedFS,
Cloudflare R2...), under an optional prefix.

Layout::

    s3://BUCKET/PREFIX/sha256/ab/abcdef...     one object per distinct content

and, on this machine, a cache under ``home/cache/s3-<id>/`` (``blobs/`` for ``materialize``,
``tmp/`` for writes whose digest is not known in advance).

How the rules of ``hub.blobstore.base`` hold here:

- **Visible only once verified.** A blob is uploaded straight to its final key as a multipart
  upload (parts sent while the bytes arrive, a few at a time), which S3 shows to no reader
  until it is completed; it is completed only after the bytes hashed to the digest, and
  aborted otherwise. A write whose digest is not known in advance is spooled to the local
  cache first and uploaded once it is. Small blobs are one ``PutObject`` at publish.
- **Uploads in flight are invisible to ``gc``**: an incomplete multipart upload is no object,
  so ``iter_digests`` never lists it; ``clear_tmp`` aborts those older than ``UPLOAD_GRACE``
  (a crashed writer's), never a live one.
- **Errors**: a store that cannot be reached, a missing bucket or refused credentials raise
  ``StoreUnavailable`` naming the store (retryable, HTTP 503); a missing object raises the
  same ``StoreCorrupted`` as the local store.

Connection settings are AWS's usual ones, read by boto3 from the environment and
``~/.aws``: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, and
``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``) for a store that is not AWS.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

from hub.blobstore.base import (
    CHUNK,
    DIGEST,
    BlobStore,
    BlobWriter,
    check_digest,
    missing,
    read_buffer,
    sha256_file,
)
from hub.blobstore.local import LocalBlobStore
from hub.progress import byte_progress
from schemas.errors import InvalidArgument, StoreCorrupted, StoreUnavailable

T = TypeVar("T")

PART = 16 * 1024 * 1024
"""Bytes per multipart part (S3 wants >= 5 MiB for all but the last); it grows every 1,000
parts so that a blob never needs more than S3's 10,000 (about 880 GB)."""
PARTS_IN_FLIGHT = 4
"""Parts one writer sends at the same time (memory per writer: this many parts)."""
_BUCKET_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789.-_")
# Errors S3 answers when the store, not the request, is at fault: the bucket, the
# credentials, the service itself.
_UNAVAILABLE_CODES = {
    "NoSuchBucket",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "ServiceUnavailable",
    "SlowDown",
    "InternalError",
    "503",
    "500",
    "403",
}
_clients: dict[tuple[str, ...], Any] = {}
_clients_lock = threading.Lock()


def _client_settings() -> tuple[str, ...]:
    """What a client depends on besides the store: a change of any makes a new client."""
    names = (
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
    )
    return tuple(os.environ.get(name, "") for name in names)


def s3_client() -> Any:
    """One boto3 S3 client per process and settings (clients are thread-safe, and making one
    costs tens of milliseconds: the server opens a store per request thread)."""
    key = _client_settings()
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            session = boto3.session.Session()
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            config = Config(
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=64,
                # SigV4 for presigned URLs too (botocore would presign with the legacy V2).
                signature_version="s3v4",
                connect_timeout=5,
                read_timeout=60,
                # Most non-AWS stores (an IP address, a single host) know no virtual hosts.
                s3={"addressing_style": "path" if endpoint else "auto"},
                # Checksums only where S3 requires them: other stores reject some of the newer
                # defaults, and every blob is verified by its sha256 anyway.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            client = session.client(
                "s3",
                endpoint_url=endpoint or None,
                region_name=session.region_name or "us-east-1",
                config=config,
            )
            _clients[key] = client
    return client


class _Body(io.RawIOBase):
    """A ``GetObject`` body as a raw stream (``readinto``), closed with the response."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        data = self._body.read(view.nbytes)
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._body.close()
        super().close()


class S3BlobWriter(BlobWriter):
    """One blob on its way to S3 (see the module docstring): a multipart upload to the final
    key when ``expected`` is known, else a spool file in the local cache."""

    def __init__(self, store: S3BlobStore, expected: str | None, limit: int | None) -> None:
        super().__init__(expected, limit)
        self.store = store
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: deque[tuple[int, Future[str]]] = deque()
        self._done: list[dict[str, Any]] = []
        self._spool: tuple[Path, IO[bytes]] | None = None
        if expected is None:
            self._spool = store.cache.open_temp()

    # -- the multipart upload ----------------------------------------------------------
    def _part_size(self) -> int:
        return PART * (1 + (len(self._done) + len(self._parts)) // 1000)

    def _write(self, chunk: bytes | memoryview) -> None:
        if self._spool is not None:
            self._spool[1].write(chunk)
            return
        self._buffer += chunk
        while len(self._buffer) >= self._part_size():
            size = self._part_size()
            part = bytes(self._buffer[:size])
            del self._buffer[:size]
            self._send(part)

    def _send(self, data: bytes) -> None:
        store = self.store
        key = store.key(str(self.expected))
        if self._upload_id is None:
            created = store.call(store.client.create_multipart_upload, Bucket=store.bucket, Key=key)
            self._upload_id = str(created["UploadId"])
        number = len(self._done) + len(self._parts) + 1
        future = store.pool().submit(
            store.call,
            _etag_of(store.client.upload_part),
            Bucket=store.bucket,
            Key=key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=data,
        )
        self._parts.append((number, future))
        while len(self._parts) >= PARTS_IN_FLIGHT:
            self._settle_oldest()

    def _settle_oldest(self) -> None:
        number, future = self._parts.popleft()
        self._done.append({"PartNumber": number, "ETag": future.result()})

    # -- BlobWriter ----------------------------------------------------------------------
    def _publish(self, digest: str) -> None:
        store = self.store
        if self._spool is not None:
            path, fh = self._spool
            fh.close()
            try:
                if not store.has(digest):
                    store.upload_file(path, digest)
            finally:
                path.unlink(missing_ok=True)
                self._spool = None
            return
        if store.has(digest):
            self.abort()  # stored already (by another push): nothing new to keep
            return
        if self._upload_id is None:
            store.call(
                store.client.put_object,
                Bucket=store.bucket,
                Key=store.key(digest),
                Body=bytes(self._buffer),
            )
            return
        if self._buffer or not (self._done or self._parts):
            self._send(bytes(self._buffer))
            self._buffer.clear()
        while self._parts:
            self._settle_oldest()
        store.call(
            store.client.complete_multipart_upload,
            Bucket=store.bucket,
            Key=store.key(digest),
            UploadId=self._upload_id,
            MultipartUpload={"Parts": sorted(self._done, key=lambda p: p["PartNumber"])},
        )
        self._upload_id = None

    def abort(self) -> None:
        if self._spool is not None:
            path, fh = self._spool
            fh.close()
            path.unlink(missing_ok=True)
            self._spool = None
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            for _number, future in self._parts:
                with contextlib.suppress(Exception):
                    future.result()
            self._parts.clear()
            # Best effort: a multipart upload left behind is invisible, and `gc` aborts it
            # once it is older than the upload grace.
            with contextlib.suppress(Exception):
                self.store.client.abort_multipart_upload(
                    Bucket=self.store.bucket,
                    Key=self.store.key(str(self.expected)),
                    UploadId=upload_id,
                )


def _etag_of(upload_part: Callable[..., Any]) -> Callable[..., str]:
    def call(**kwargs: Any) -> str:
        return str(upload_part(**kwargs)["ETag"])

    return call


class S3BlobStore(BlobStore):
    """Blobs addressed by sha256 in ``s3://bucket/prefix``, with a local cache in ``cache_root``.

    Example:
        >>> store = S3BlobStore("team-hub", "blobs", home / "cache" / "s3")   # doctest: +SKIP
        >>> digest, size = store.put_file(Path("adapter_model.safetensors"))  # doctest: +SKIP
        >>> store.download_url(digest, expires=300)                           # doctest: +SKIP
        'https://team-hub.s3.amazonaws.com/blobs/sha256/...&X-Amz-Signature=...'
    """

    remote = True

    def __init__(self, bucket: str, prefix: str, cache_root: Path) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.location = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.client = s3_client()
        # The cache is a local blob store of its own: the same verified, atomic writes and
        # crash-safe temp files, and links that `materialize` lays out into it.
        self.cache = LocalBlobStore(Path(cache_root))
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # -- this backend's own ----------------------------------------------------------------
    def key(self, digest: str) -> str:
        """The object key of blob ``digest``."""
        shard = f"sha256/{check_digest(digest)[:2]}/{digest}"
        return f"{self.prefix}/{shard}" if self.prefix else shard

    def _listing_prefix(self) -> str:
        return f"{self.prefix}/sha256/" if self.prefix else "sha256/"

    def pool(self) -> ThreadPoolExecutor:
        """The threads that send multipart parts (shared by this store's writers)."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(16, thread_name_prefix="hub-s3")
            return self._pool

    def call(self, method: Callable[..., T], **kwargs: Any) -> T:
        """``method(**kwargs)`` with the store's trouble turned into ``StoreUnavailable``."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return method(**kwargs)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in _UNAVAILABLE_CODES:
                raise self._unavailable(error) from error
            raise
        except BotoCoreError as error:
            raise self._unavailable(error) from error

    def _unavailable(self, error: Exception) -> StoreUnavailable:
        from botocore.exceptions import ClientError

        if isinstance(error, ClientError):
            detail = error.response.get("Error", {})
            reason = f"{detail.get('Code', '?')}: {detail.get('Message') or 'refused'}"
        else:
            reason = str(error)
        return StoreUnavailable(
            f"blob store {self.location} is unavailable ({reason}): check --store /"
            " HUB_STORE_URL and the AWS settings, then retry (nothing was changed)",
            path=self.location,
        )

    def _head(self, digest: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self.call(self.client.head_object, Bucket=self.bucket, Key=self.key(digest))
        except ClientError as error:
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or error.response.get("Error", {}).get("Code") in (
                "404",
                "NoSuchKey",
                "NotFound",
            ):
                return None
            raise self._unavailable(error) from error

    def upload_file(self, path: Path, digest: str) -> None:
        """Send file ``path`` (whose bytes hash to ``digest``) to blob ``digest``, verified
        again on the way: the object appears only if the bytes sent hash to ``digest``."""
        size = os.path.getsize(path)
        with open(path, "rb", buffering=0) as fin, self.writer(expected=digest) as blob:
            buf = read_buffer(size)
            view = memoryview(buf)
            while n := fin.readinto(buf):
                blob.write(view[:n])
            blob.publish()

    def download_url(self, digest: str, expires: int) -> str | None:
        return str(
            self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self.key(digest)},
                ExpiresIn=int(expires),
            )
        )

    # -- reading ---------------------------------------------------------------------------
    def has(self, digest: str) -> bool:
        return self._head(digest) is not None

    def size(self, digest: str) -> int:
        head = self._head(digest)
        if head is None:
            raise missing(digest)
        return int(head["ContentLength"])

    def open(self, digest: str, start: int = 0, end: int | None = None) -> IO[bytes]:
        from botocore.exceptions import ClientError

        if end is not None and end <= start:
            return io.BytesIO(b"")
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key(digest)}
        if start or end is not None:
            params["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        try:
            response = self.call(self.client.get_object, **params)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise missing(digest) from None
            if code == "InvalidRange":  # start at or past the end: no bytes
                if not self.has(digest):
                    raise missing(digest) from None
                return io.BytesIO(b"")
            raise self._unavailable(error) from error
        return io.BufferedReader(_Body(response["Body"]), buffer_size=CHUNK)

    def _pages(self, operation: str) -> Iterator[dict[str, Any]]:
        """The pages of a listing under this store's prefix (store trouble raised as
        ``StoreUnavailable``, as for every other call)."""
        from botocore.exceptions import BotoCoreError, ClientError

        pages = self.client.get_paginator(operation).paginate(
            Bucket=self.bucket, Prefix=self._listing_prefix()
        )
        try:
            yield from pages
        except (BotoCoreError, ClientError) as error:
            raise self._unavailable(error) from error

    def uploads_in_progress(self) -> list[dict[str, Any]]:
        """The multipart uploads begun under this store's prefix and neither completed nor
        aborted (``Key``, ``UploadId``, ``Initiated``): live writers' and crashed ones'."""
        return [
            u for page in self._pages("list_multipart_uploads") for u in page.get("Uploads", ())
        ]

    def iter_digests(self) -> Iterator[str]:
        for page in self._pages("list_objects_v2"):
            for entry in page.get("Contents", ()):
                name = str(entry["Key"]).rsplit("/", 1)[-1]
                if DIGEST.fullmatch(name) and entry["Key"] == self.key(name):
                    yield name

    # -- writing ---------------------------------------------------------------------------
    def writer(self, expected: str | None = None, limit: int | None = None) -> S3BlobWriter:
        return S3BlobWriter(self, expected, limit)

    def put_file(self, src: Path, *, description: str | None = None) -> tuple[str, int]:
        """Hash ``src``, then upload it unless the store holds that content already (a second
        local read costs far less than sending bytes the store has). The upload is verified
        against the first hash: a file changed in between is refused, nothing stored."""
        if (known := self.materialized_digest(src)) is not None:
            return known
        size = os.path.getsize(src)
        bar = byte_progress(description or Path(src).name, size)
        try:
            digest = sha256_file(Path(src), bar)
        finally:
            bar.close()
        if not self.has(digest):
            self.upload_file(Path(src), digest)
        return digest, size

    def delete(self, digest: str) -> int:
        head = self._head(digest)
        self.cache.delete(digest)
        if head is None:
            return 0
        self.call(self.client.delete_object, Bucket=self.bucket, Key=self.key(digest))
        return int(head["ContentLength"])

    def clear_tmp(self) -> int:
        """The cache's leftovers (see ``LocalBlobStore.clear_tmp``), and multipart uploads
        begun more than ``UPLOAD_GRACE`` ago (a crashed writer's: no live one takes that
        long). Returns the local bytes freed."""
        from hub.uploads import UPLOAD_GRACE

        freed = self.cache.clear_tmp()
        cutoff = datetime.now(timezone.utc) - UPLOAD_GRACE
        for upload in self.uploads_in_progress():
            if upload["Initiated"] < cutoff:
                with contextlib.suppress(Exception):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
        return freed

    # -- files on disk ---------------------------------------------------------------------
    def fetch(self, digest: str) -> Path:
        """The cached copy of blob ``digest``, downloaded (and verified) first if needed."""
        cached = self.cache.local_path(digest)
        if cached is not None:
            return cached
        with self.open(digest) as fin, self.cache.writer(expected=digest) as blob:
            while chunk := fin.read(CHUNK):
                blob.write(chunk)
            try:
                blob.publish()
            except InvalidArgument:
                raise StoreCorrupted(
                    f"blob {digest[:12]} in {self.location} is corrupted: its bytes no longer"
                    " match their sha256 (run `hub verify`)",
                    digest=digest,
                ) from None
        return self.cache.path(digest)

    @contextlib.contextmanager
    def materialize(self, files: Mapping[str, str], folder: Path | None = None) -> Iterator[Path]:
        """Each blob fetched into the local cache once, then linked (see
        ``BlobStore.materialize``)."""
        for digest in dict.fromkeys(files.values()):
            self.fetch(digest)
        with self.cache.materialize(files, folder) as laid_out:
            # Touched on use: the cache's own clean-up keeps what is in use.
            now = time.time()
            for digest in dict.fromkeys(files.values()):
                with contextlib.suppress(OSError):
                    os.utime(self.cache.path(digest), (now, now))
            yield laid_out

    def materialized_roots(self) -> tuple[Path, ...]:
        return self.cache.materialized_roots()

    def materialized_digest(self, path: Path) -> tuple[str, int] | None:
        found = self.cache.materialized_digest(path)
        # A cached copy is proof of the content, not that the store still holds it.
        return found if found is not None and self.has(found[0]) else None


def open_s3(url: str, home: Path) -> S3BlobStore:
    """The store ``s3://BUCKET[/PREFIX]``, caching under ``home/cache``.

    Raises:
        InvalidArgument: no bucket, or a bucket name S3 would refuse.
    """
    parts = urlsplit(url)
    bucket = parts.netloc
    if not bucket or not set(bucket) <= _BUCKET_CHARS or not 3 <= len(bucket) <= 63:
        raise InvalidArgument(
            f"--store {url!r}: an s3:// store URL names a bucket (s3://BUCKET[/PREFIX];"
            " 3-63 lowercase letters, digits, '.', '-')"
        )
    try:
        import boto3  # noqa: F401
    except ImportError:
        raise InvalidArgument(
            f"--store {url!r}: the S3 store needs boto3 (pip install 'hub-adapters[team]')"
        ) from None
    location = f"{bucket}/{parts.path.strip('/')}"
    cache = Path(home) / "cache" / f"s3-{hashlib.sha256(location.encode()).hexdigest()[:12]}"
    return S3BlobStore(bucket, parts.path, cache)
