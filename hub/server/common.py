"""What every route shares: a registry per worker thread, token checks, error responses,
bounded request bodies, verified blob writes and the staging of a commit's files."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from hub.blobstore import BlobWriter
from hub.errors_http import encode_error, encode_hf_error
from hub.registry import Registry, adapter_files
from hub.tokens import Token, active_token, authenticate
from hub.uploads import grace_start
from schemas.errors import AuthError, HubError, InvalidArgument

MiB = 1024 * 1024
ANONYMOUS_BODY_BYTES = 64 * 1024
"""The most a request without a valid token may send (the LFS upload links excepted)."""
DRAIN_BYTES = 64 * MiB
DIGEST = re.compile(r"[0-9a-f]{64}")
API = "/api/hub/v1"
"""Where the native JSON API's routes live."""
LFS_KEY_SETTING = "lfs_upload_key"
"""The catalog setting holding the hex key that signs LFS upload links."""

_PUBLIC_HOME: ContextVar[tuple[str, ...]] = ContextVar("hub_public_home", default=())
"""The spellings of the registry folder of the app answering the current request."""


def public_message(error: HubError) -> str:
    """``str(error)`` as a client may see it: no path on the server's disk (the registry
    folder reads ``$HUB_HOME``; a pushed file is named by its place in the adapter, not by
    the temp folder it was inspected in), and only text that can be encoded."""
    message = str(error)
    for home in _PUBLIC_HOME.get():
        message = re.sub(re.escape(home) + r"/tmp/[^/\s'\"]+/", "", message)
        message = message.replace(home, "$HUB_HOME")
    return message.encode("utf-8", "backslashreplace").decode()


def error_response(error: HubError, *, hf: bool = False) -> JSONResponse:
    """``{"error": {"code", "message"}}`` plus the headers the HF client reads; with ``hf``,
    the Hugging Face Hub's own ``{"error": message}`` (``hub.errors_http`` maps the kinds)."""
    status, body, headers = encode_error(error, public_message(error), hf=hf)
    return JSONResponse(body, status_code=status, headers=headers)


def hf_error_response(error: HubError, code: str | None = None) -> JSONResponse:
    """A Hugging Face route's answer to ``error``, with the ``X-Error-Code`` (``code``, e.g.
    ``EntryNotFound``, else the kind's own) and status that ``huggingface_hub`` expects."""
    status, body, headers = encode_hf_error(error, public_message(error), code)
    return JSONResponse(body, status_code=status, headers=headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for a route that answers these statuses with an ``ErrorBody``."""
    from schemas.api import ErrorBody

    return {status: {"model": ErrorBody} for status in statuses}


READ_ERRORS = error_responses(401, 403, 404, 422)
WRITE_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 422)


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
    base_dirs: tuple[Path, ...] = ()
    """Folders under which a pushed adapter's ``base_model_name_or_path`` may be read to count
    the base's parameters (the operator's allow-list); nothing else on disk is ever read."""
    client_timeout: float = 30.0
    """Seconds a JSON body may take to arrive, and an upload may go without sending a byte."""
    max_anonymous: int = 64
    """Requests without a valid token handled at once; more are answered 429 at once."""
    db: str | None = None
    """The team catalog's URL (``--db``); None: the SQLite index in ``home``."""
    store: str | None = None
    """The blob store's URL (``--store``); None: the folder ``store/`` in ``home``."""
    store_downloads: str = "redirect"
    """``redirect``: downloads from an object store answer 302 to a presigned URL;
    ``proxy``: the server streams the bytes (``hub.server.downloads``)."""
    presign_expires: int = 300
    """Seconds a presigned download URL stays valid."""
    anonymous_in_flight: int = 0
    """Counted by ``BoundedBodies`` on the event loop's thread (so no lock)."""
    _lfs_key: bytes | None = None
    """The catalog's LFS signing key once read (``lfs_key``): it never changes."""

    def registry(self) -> Registry:
        # SQLite connections stay in the thread that opened them: one registry per worker.
        reg = getattr(self._local, "registry", None)
        if reg is None:
            reg = self._local.registry = Registry(self.home, db=self.db, store=self.store)
        return reg

    def lfs_key(self) -> bytes:
        """The key that signs Git LFS upload links (``hub.server.hf_write``): one per
        catalog, stored there by the first worker that needs it, so a link one worker
        signed is accepted by every other (and by this one after a restart)."""
        if self._lfs_key is None:
            stored = self.registry().catalog.setting(LFS_KEY_SETTING, os.urandom(32).hex())
            self._lfs_key = bytes.fromhex(stored)
        return self._lfs_key

    def keep_upload(self, blob: BlobWriter, token_id: str) -> int:
        """Publish a received blob and record that ``token_id`` uploaded it, under the store
        lock (shared), so ``gc`` spares it until its commit (hub/uploads.py). Refused when
        the token was revoked meanwhile. Returns the blob's size. Blocks while ``gc`` runs:
        call it from a worker thread."""
        registry = self.registry()
        with registry.store_lock(shared=True):
            active_token(registry, token_id)
            digest, size = blob.publish()
            registry.catalog.record_upload(token_id, digest)
        return size

    def uploaded_by(self, token: Token, digest: str) -> bool:
        """Whether ``token`` uploaded ``digest`` within the upload grace period."""
        return self.registry().catalog.uploaded_by(token.id, digest, since=grace_start())

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


def readable_namespaces(request: Request) -> list[str] | None:
    """The namespaces the caller may read, for a search to filter on in SQL; None: all."""
    token = caller(request)
    if token is None:
        if state(request).anonymous_read:
            return None
        raise AuthError("authentication required: send 'Authorization: Bearer TOKEN'", status=401)
    scopes = set(token.read) | set(token.write)
    return None if "*" in scopes else sorted(scopes)


def blob_namespaces(registry: Registry, digest: str) -> list[str]:
    """The namespaces with a version that uses blob ``digest``."""
    return registry.catalog.blob_namespaces(digest)


def check_digest(digest: str) -> str:
    if not DIGEST.fullmatch(digest):
        raise InvalidArgument(f"invalid sha256 {digest[:80]!r}: expected 64 lowercase hex digits")
    return digest


def stage_files(registry: Registry, folder: Path, files: dict[str, str]) -> Path:
    """Lay out a commit's ``files`` (path -> sha256) in ``folder`` for ``Registry.push``
    (``BlobStore.materialize``), and check that the push will store every one of them: a
    version never has fewer files than the client sent. Call it holding the store lock
    (shared) until the push is done, so that no blob goes away meanwhile (hub/uploads.py).

    Raises:
        InvalidArgument: a blob is not stored, or a path is one an adapter folder leaves out.
    """
    store = registry.store
    for path, digest in files.items():
        if not store.has(digest):
            raise InvalidArgument(
                f"{path!r}: blob {digest[:12]} is not stored (upload it and commit again)"
            )
    with store.materialize(files, folder):
        stored = adapter_files(folder, trusted=store.materialized_roots())
    left_out = sorted(set(files) - {rel for rel, _ in stored})
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
    """ASGI middleware in front of every route: who may send how much, how slowly.

    - The token is checked before any body is read. A request with an invalid token has its
      body discarded (read, never kept, within ``client_timeout``) and gets 401; one without a
      token may send at most ``ANONYMOUS_BODY_BYTES`` (the signed LFS upload links, checked
      by their route before reading, excepted). At most ``max_anonymous`` requests without a
      valid token are handled at once; more get 429 before anything is read.
    - Other bodies are read (up to ``limit`` bytes, chunked or not) before the app sees
      them, within ``client_timeout`` seconds (else 408); larger ones are refused with 413.
    - Routes that stream uploads (``streams(method, path)``) bound their bodies themselves;
      here an upload that sends nothing for ``client_timeout`` seconds is ended (408).
    """

    def __init__(
        self,
        app: ASGIApp,
        srv: ServerState,
        limit: int,
        streams: Callable[[str, str], bool],
    ) -> None:
        self.app, self.srv, self.limit, self.streams = app, srv, limit, streams
        home = Path(srv.home).expanduser().absolute()
        self.homes = tuple(dict.fromkeys([str(home), str(home.resolve())]))

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        homes = _PUBLIC_HOME.set(self.homes)
        try:
            await self._guarded(scope, receive, send)
        finally:
            _PUBLIC_HOME.reset(homes)

    async def _guarded(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        srv = self.srv
        hf = not scope["path"].startswith("/api/hub/v1/") or "/lfs/" in scope["path"]
        refusal: HubError | None = None
        authorization = dict(scope.get("headers") or []).get(b"authorization")
        if authorization is not None:
            try:
                await run_in_threadpool(caller, Request(scope))
            except HubError as error:
                refusal = error
        if authorization is None or refusal is not None:
            if srv.anonymous_in_flight >= srv.max_anonymous:
                busy = InvalidArgument(
                    f"over {srv.max_anonymous} requests without a valid token at once: retry"
                    " later, or send 'Authorization: Bearer TOKEN'",
                    status=429,
                )
                await error_response(busy, hf=hf)(scope, receive, send)
                return
            srv.anonymous_in_flight += 1
            try:
                await self._bounded(scope, receive, send, refusal, hf, anonymous=True)
            finally:
                srv.anonymous_in_flight -= 1
            return
        await self._bounded(scope, receive, send, None, hf, anonymous=False)

    async def _bounded(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
        refusal: HubError | None,
        hf: bool,
        *,
        anonymous: bool,
    ) -> None:
        timeout = self.srv.client_timeout
        limit = ANONYMOUS_BODY_BYTES if anonymous else self.limit
        if refusal is None and self.streams(scope["method"], scope["path"]):
            await self.app(scope, _idle_limited(receive, timeout), send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > DRAIN_BYTES:
            too_large = InvalidArgument(f"request body over {self.limit} bytes", status=413)
            await error_response(refusal or too_large, hf=hf)(scope, receive, send)
            return
        body = bytearray()
        seen = 0
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                stalled = InvalidArgument(
                    f"request body not received within {timeout:g} s", status=408
                )
                await error_response(refusal or stalled, hf=hf)(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if refusal is None and seen > limit:
                refusal = (
                    AuthError(
                        "authentication required: send 'Authorization: Bearer TOKEN' (a"
                        f" request without a token may send at most {limit} bytes)",
                        status=401,
                    )
                    if anonymous
                    else InvalidArgument(f"request body over {limit} bytes", status=413)
                )
                body.clear()
            if refusal is None:
                body += chunk
            if not message.get("more_body") or seen > DRAIN_BYTES:
                break
        if refusal is not None:
            # Read (and dropped) up to DRAIN_BYTES first: a client still sending when the
            # answer comes would see a broken pipe instead of this message.
            await error_response(refusal, hf=hf)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _idle_limited(
    receive: Callable[[], Awaitable[Any]], timeout: float
) -> Callable[[], Awaitable[Any]]:
    """``receive`` for a streamed upload: each chunk must come within ``timeout`` seconds.
    Once the body is complete, waits (for the disconnect) are not limited."""
    done = False

    async def timed() -> Any:
        nonlocal done
        if done:
            return await receive()
        try:
            message = await asyncio.wait_for(receive(), timeout)
        except asyncio.TimeoutError:
            raise InvalidArgument(
                f"upload stalled: nothing received for {timeout:g} s", status=408
            ) from None
        done = message["type"] != "http.request" or not message.get("more_body")
        return message

    return timed
