"""The FastAPI app: state, middleware and error handlers around the routers.

The native JSON API under ``/api/hub/v1`` (``routes_api``, ``routes_blobs``, ``evals``), the
web page under ``/ui/`` (``hub.ui``) and the Hugging Face protocol (``hf_write``, ``hf``).
Every route checks the caller's token against the namespace it touches; uploads are hashed
as they stream in and become visible only when their sha256 matches the one they claim.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from hub.server import evals, hf, hf_write, routes_api, routes_blobs
from hub.server.common import API, BoundedBodies, ServerState, error_response
from hub.server.downloads import DOWNLOAD_MODES
from schemas.api import MAX_JSON_BYTES
from schemas.errors import HubError, InvalidArgument

_STREAMED = re.compile(rf"PUT {API}/(blobs|lfs)/[^/]*|POST /api/models/[^/]+/[^/]+/commit/.*")


def _streams(method: str, path: str) -> bool:
    """Routes whose bodies are uploads, streamed and bounded by the route itself."""
    return _STREAMED.fullmatch(f"{method} {path}") is not None


def create_app(
    home: str | os.PathLike[str],
    *,
    db: str | None = None,
    store: str | None = None,
    store_downloads: str = "redirect",
    presign_expires: int = 300,
    anonymous_read: bool = False,
    inline_upload_max: int | None = None,
    max_upload_bytes: int | None = None,
    max_commit_bytes: int | None = None,
    base_dirs: Iterable[str | os.PathLike[str]] = (),
    client_timeout: float | None = None,
    max_anonymous: int | None = None,
) -> FastAPI:
    """The team hub over the registry at ``home``.

    Args:
        home: the registry folder (``HUB_HOME``).
        db: the team catalog, ``postgresql://USER@HOST/DB`` (``--db``); None: the SQLite
            index in ``home``.
        store: where blobs live, ``s3://BUCKET/PREFIX`` or ``file:///DIR`` (``--store``);
            None: the folder ``store/`` in ``home``.
        store_downloads: ``redirect`` (downloads from an object store answer 302 to a
            presigned URL) or ``proxy`` (the server streams them: a store clients cannot
            reach). Ignored for a local store, whose files the server sends itself.
        presign_expires: seconds a presigned download URL stays valid (1 to 7 days).
        anonymous_read: let requests without a token read every namespace.
        inline_upload_max: files up to this many bytes are sent inline in Hugging Face
            commits (the path clients with ``hf_xet`` installed can use); larger ones through
            Git LFS. Default 1 GiB.
        max_upload_bytes: the largest single file accepted. Default 64 GiB.
        max_commit_bytes: the largest Hugging Face commit body (spooled to disk). Default 4 GiB.
        base_dirs: folders where base models named by pushed adapters may be read to count
            their parameters (``org/model`` is looked up under each). Default: none, so the
            server never reads its disk for an uploaded config.
        client_timeout: seconds a JSON body may take to arrive, and an upload may pause
            (``hub.server.protocol`` applies it to request headers). Default 30.
        max_anonymous: requests without a valid token handled at once (more get 429).
            Default 64.

    Example:
        >>> import uvicorn                                                   # doctest: +SKIP
        >>> uvicorn.run(create_app("/srv/hub"), host="127.0.0.1", port=8000)
    """
    app = FastAPI(
        title="hub",
        version="1",
        description="Adapter registry: native JSON API and the Hugging Face Hub protocol. "
        'Errors are `{"error": {"code", "message"}}` with the code also in '
        "`X-Error-Code`; send `Authorization: Bearer TOKEN` (`hub token create`).",
    )
    if store_downloads not in DOWNLOAD_MODES:
        raise InvalidArgument(
            f"--store-downloads {store_downloads!r}: one of {', '.join(DOWNLOAD_MODES)}"
        )
    if not 1 <= presign_expires <= 7 * 24 * 3600:
        raise InvalidArgument(
            f"--presign-expires {presign_expires}: between 1 and 604800 seconds (7 days, the"
            " longest S3 signs for)"
        )
    srv = ServerState(
        Path(home),
        anonymous_read=anonymous_read,
        db=db,
        store=store,
        store_downloads=store_downloads,
        presign_expires=presign_expires,
    )
    if inline_upload_max is not None:
        srv.inline_upload_max = inline_upload_max
    if max_upload_bytes is not None:
        srv.max_upload_bytes = max_upload_bytes
    if max_commit_bytes is not None:
        srv.max_commit_bytes = max_commit_bytes
    srv.base_dirs = tuple(Path(d) for d in base_dirs)
    if client_timeout is not None:
        srv.client_timeout = client_timeout
    if max_anonymous is not None:
        srv.max_anonymous = max_anonymous
    app.state.hub = srv
    app.add_middleware(BoundedBodies, srv=srv, limit=MAX_JSON_BYTES, streams=_streams)

    @app.exception_handler(HubError)
    async def _hub_error(request: Request, error: HubError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"invalid request: {where}: {first.get('msg', 'malformed')}"
        return error_response(InvalidArgument(message, status=422))

    from hub.ui import mount_ui

    # Order matters where paths overlap: the native API first, then the web page under /ui/
    # (and `/` for browsers) before /{ns}/{name}/..., the HF write routes before the read
    # ones (/{ns}/{name}.git/... is the more specific).
    app.include_router(routes_api.router)
    app.include_router(routes_blobs.router)
    mount_ui(app)
    app.include_router(evals.router)
    app.include_router(hf_write.router)
    app.include_router(hf.router)
    return app
