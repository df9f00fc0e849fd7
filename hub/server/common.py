"""What every route shares: a registry per worker thread, token checks, error responses,
bounded request bodies, verified blob writes and the staging of a commit's files."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from hub.locks import file_lock
from hub.registry import Registry, adapter_files
from hub.store import BlobStore
from hub.tokens import Token, active_token, authenticate
from hub.uploads import grace_start
from schemas.errors import (
    AdapterNotFound,
    AuthError,
    HubError,
    InvalidArgument,
    OutputExists,
    RevisionNotFound,
    StoreCorrupted,
)

MiB = 1024 * 1024
DRAIN_BYTES = 64 * MiB
DIGEST = re.compile(r"[0-9a-f]{64}")

STATUS: dict[type[HubError], int] = {
    AdapterNotFound: 404,
    RevisionNotFound: 404,
    OutputExists: 409,
    StoreCorrupted: 500,
}


def status_of(error: HubError) -> int:
    """The HTTP status of ``error``: its ``status`` context if it has one, else by class."""
    if "status" in error.context:
        return int(error.context["status"])
    if isinstance(error, AuthError):
        return 401
    return next((code for cls, code in STATUS.items() if isinstance(error, cls)), 400)


def header_safe(text: str) -> str:
    """HTTP header values are latin-1: escape anything else (a name may hold any Unicode)."""
    return text[:500].encode("ascii", "backslashreplace").decode().replace("\n", " ")


def error_response(error: HubError) -> JSONResponse:
    """``{"error": {"code", "message"}}`` plus the headers the HF client reads."""
    return JSONResponse(
        {"error": {"code": error.code, "message": str(error)}},
        status_code=status_of(error),
        headers={"X-Error-Code": error.code, "X-Error-Message": header_safe(str(error))},
    )


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for a route that answers these statuses with an ``ErrorBody``."""
    from schemas.api import ErrorBody

    return {status: {"model": ErrorBody} for status in statuses}


@dataclass
class ServerState:
    home: Path
    anonymous_read: bool = False
    max_upload_bytes: int = 64 * 1024**3
    """Largest single blob (native upload or Git LFS object)."""
    inline_upload_max: int = 1024 * MiB
    """Files up to this size go inline in Hugging Face commits (``uploadMode: regular``), the
    one upload path clients with ``hf_xet`` installed can take without Xet; larger ones go
    through Git LFS."""
    max_commit_bytes: int = 4 * 1024 * MiB
    """Largest NDJSON commit body (spooled to disk, never held in memory)."""
    _local: threading.local = field(default_factory=threading.local)
    _repo_locks: dict[str, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def registry(self) -> Registry:
        # SQLite connections stay in the thread that opened them: one registry per worker.
        reg = getattr(self._local, "registry", None)
        if reg is None:
            reg = self._local.registry = Registry(self.home)
        return reg

    def repo_lock(self, repo: str) -> threading.Lock:
        """Held while a Hugging Face commit is applied on top of ``repo``'s latest files, so
        two concurrent commits never build on the same head and lose one another's files."""
        with self._guard:
            return self._repo_locks.setdefault(repo, threading.Lock())

    def keep_upload(self, blob: BlobWriter, expected: str, token_id: str) -> int:
        """Publish a received blob and record that ``token_id`` uploaded it, under the store
        lock (shared), so ``gc`` spares it until its commit (hub/uploads.py). Refused when
        the token was revoked meanwhile. Returns the blob's size. Blocks while ``gc`` runs:
        call it from a worker thread."""
        registry = self.registry()
        with file_lock(registry.lock_path, shared=True):
            active_token(registry, token_id)
            digest, size = blob.publish(expected=expected)
            registry.index.record_upload(token_id, digest)
        return size

    def uploaded_by(self, token: Token, digest: str) -> bool:
        """Whether ``token`` uploaded ``digest`` within the upload grace period."""
        return self.registry().index.uploaded_by(token.id, digest, since=grace_start())

    def may_reference(self, token: Token, digest: str) -> bool:
        """Whether a push by ``token`` may use the stored blob ``digest`` without uploading it.

        Blobs are stored once across namespaces, so knowing a digest must not be enough to
        copy a file out of a namespace the token cannot read, nor one that ``hub rm`` took
        down or that another token uploaded for a commit not yet made: the blob has to be in
        a version the token may read, or uploaded by this token (which proves it holds the
        bytes)."""
        registry = self.registry()
        if not registry.store.has(digest):
            return False
        namespaces = blob_namespaces(registry, digest)
        if namespaces and (self.anonymous_read or any(token.can_read(ns) for ns in namespaces)):
            return True
        return self.uploaded_by(token, digest)

    def scratch(self) -> Path:
        """A folder for request-scoped temp files, on the store's file system."""
        path = self.home / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path


def state(request: Request) -> ServerState:
    return request.app.state.hub


def caller(request: Request) -> Token | None:
    """The request's token (``Authorization: Bearer``), or None when anonymous."""
    header = request.headers.get("authorization", "")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthError("malformed Authorization header: expected 'Bearer TOKEN'", status=401)
    return authenticate(state(request).registry(), value.strip())


def require_read(request: Request, namespace: str) -> Token | None:
    token = caller(request)
    if token is None:
        if state(request).anonymous_read:
            return None
        raise AuthError("authentication required: send 'Authorization: Bearer TOKEN'", status=401)
    if not token.can_read(namespace):
        raise AuthError(f"token {token.name!r} may not read namespace {namespace!r}", status=403)
    return token


def require_write(request: Request, namespace: str | None) -> Token:
    token = caller(request)
    if token is None:
        raise AuthError("authentication required: send 'Authorization: Bearer TOKEN'", status=401)
    allowed = token.can_write(namespace) if namespace is not None else bool(token.write)
    if not allowed:
        where = f"namespace {namespace!r}" if namespace else "any namespace"
        raise AuthError(f"token {token.name!r} may not write to {where}", status=403)
    return token


def readable(request: Request, cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only the cards of namespaces the caller may read."""
    token = caller(request)
    if token is None:
        if state(request).anonymous_read:
            return cards
        raise AuthError("authentication required: send 'Authorization: Bearer TOKEN'", status=401)
    return [c for c in cards if token.can_read(c["repo"].split("/")[0])]


def blob_namespaces(registry: Registry, digest: str) -> list[str]:
    """The namespaces with a version that uses blob ``digest``."""
    rows = registry.index.conn.execute(
        "SELECT DISTINCT r.namespace FROM files f JOIN versions v ON v.id = f.version_id"
        " JOIN repos r ON r.id = v.repo_id WHERE f.sha256 = ? ORDER BY r.namespace",
        (digest,),
    )
    return [row[0] for row in rows]


def check_digest(digest: str) -> str:
    if not DIGEST.fullmatch(digest):
        raise InvalidArgument(f"invalid sha256 {digest[:80]!r}: expected 64 lowercase hex digits")
    return digest


class BlobWriter:
    """A blob being received: bytes are hashed as they are written to the store's temp area,
    and the blob becomes visible only through ``publish``, when its bytes hash to the sha256
    they claim and stay within ``limit``. Leaving the ``with`` block without publishing (an
    error, a client that hung up) removes the temp file: nothing half-written is ever seen.

    Example:
        >>> with BlobWriter(store, limit=1 << 30) as blob:           # doctest: +SKIP
        ...     for chunk in chunks:
        ...         blob.write(chunk)
        ...     digest, size = blob.publish(expected=claimed_sha256)
    """

    def __init__(self, store: BlobStore, *, limit: int) -> None:
        self.store, self.limit = store, limit
        # Locked while open, so that `gc` leaves it alone: closed in publish / __exit__.
        self.tmp, self._fh = store.open_temp()
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise InvalidArgument(f"upload over {self.limit} bytes", status=413)
        self.hasher.update(chunk)
        self._fh.write(chunk)

    def publish(self, expected: str | None = None) -> tuple[str, int]:
        """Make the blob visible; returns ``(sha256, size)``. Refused (InvalidArgument) when
        ``expected`` is given and the bytes hash to something else."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        digest = self.hasher.hexdigest()
        if expected is not None and digest != expected:
            raise InvalidArgument(
                f"uploaded bytes hash to {digest[:12]}, not {expected[:12]}: refused"
            )
        if self.store.has(digest):
            self.tmp.unlink()
        else:
            self.store.publish(self.tmp, digest)
        self._fh.close()  # only now: the open file is what keeps `gc` off the temp file
        return digest, self.size

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()  # gone already when published


def stage_files(registry: Registry, folder: Path, files: dict[str, str]) -> Path:
    """Lay out a commit's ``files`` (path -> sha256) in ``folder`` as links to their blobs,
    for ``Registry.push``, and check that the push will store every one of them: a version
    never has fewer files than the client sent. Call it holding the store lock (shared)
    until the push is done, so that no blob goes away meanwhile (hub/uploads.py).

    Raises:
        InvalidArgument: a blob is not stored, or a path is one an adapter folder leaves out.
    """
    for path, digest in files.items():
        if not registry.store.has(digest):
            raise InvalidArgument(
                f"{path!r}: blob {digest[:12]} is not stored (upload it and commit again)"
            )
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(registry.store.path(digest), target)
    left_out = sorted(set(files) - {rel for rel, _ in adapter_files(folder)})
    if left_out:
        raise InvalidArgument(
            f"file {left_out[0]!r} would not be stored: hidden files and __pycache__ folders"
            " are no part of an adapter (leave them out of the commit)"
        )
    return folder


ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


class BoundedBodies:
    """ASGI middleware: every request body is read (up to ``limit`` bytes, chunked or not)
    before the app sees it; larger ones are refused with 413. Routes that stream uploads
    (``streams(method, path)``) are passed through and bound their bodies themselves."""

    def __init__(self, app: ASGIApp, limit: int, streams: Callable[[str, str], bool]) -> None:
        self.app, self.limit, self.streams = app, limit, streams

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http" or self.streams(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        too_large = InvalidArgument(f"request body over {self.limit} bytes", status=413)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > DRAIN_BYTES:
            await error_response(too_large)(scope, receive, send)
            return
        body = bytearray()
        seen = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen <= self.limit:
                body += chunk
            if not message.get("more_body") or seen > DRAIN_BYTES:
                break
        if seen > self.limit:
            # Read (and dropped) up to DRAIN_BYTES first: a client still sending when the
            # answer comes would see a broken pipe instead of this message.
            await error_response(too_large)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
