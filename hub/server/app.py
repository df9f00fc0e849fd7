"""The FastAPI app: the native JSON API under ``/api/hub/v1`` and the Hugging Face protocol.

Every route checks the caller's token against the namespace it touches; uploads are hashed
as they stream in and become visible only when their sha256 matches the one they claim.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response

from hub.folders import refuse_ignored
from hub.server.common import (
    MAX_JSON_BYTES,
    BlobWriter,
    BoundedBodies,
    ServerState,
    blob_namespaces,
    caller,
    check_digest,
    error_response,
    error_responses,
    readable,
    require_read,
    require_write,
    state,
)
from schemas.api import AliasBody, BlobStored, NewVersion, PushedCard
from schemas.card import AdapterCard
from schemas.errors import AuthError, HubError, InvalidArgument
from schemas.recipe import Recipe
from schemas.refs import validate_repo_id

API = "/api/hub/v1"
_STREAMED = re.compile(rf"PUT {API}/(blobs|lfs)/[^/]*|POST /api/models/[^/]+/[^/]+/commit/.*")


def _streams(method: str, path: str) -> bool:
    """Routes whose bodies are uploads, streamed and bounded by the route itself."""
    return _STREAMED.fullmatch(f"{method} {path}") is not None


def safe_relative_path(path: str) -> str:
    """A file path inside an adapter folder: relative, no ``..``, no empty or hidden tricks."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(p in ("", ".", "..") or len(p.encode()) > 255 for p in parts)
        or len(parts) > 32
    ):
        raise InvalidArgument(f"invalid file path {path!r}: must stay inside the adapter folder")
    return refuse_ignored(path)  # the push rule: hidden files are refused, never dropped


def _ref(namespace: str, name: str, revision: str | None) -> str:
    repo = validate_repo_id(f"{namespace}/{name}")
    return f"{repo}@{revision}" if revision else repo


def create_app(
    home: str | os.PathLike[str],
    *,
    anonymous_read: bool = False,
    inline_upload_max: int | None = None,
    max_upload_bytes: int | None = None,
    max_commit_bytes: int | None = None,
) -> FastAPI:
    """The team hub over the registry at ``home``.

    Args:
        home: the registry folder (``HUB_HOME``).
        anonymous_read: let requests without a token read every namespace.
        inline_upload_max: files up to this many bytes are sent inline in Hugging Face
            commits (the path clients with ``hf_xet`` installed can use); larger ones through
            Git LFS. Default 1 GiB.
        max_upload_bytes: the largest single file accepted. Default 64 GiB.
        max_commit_bytes: the largest Hugging Face commit body (spooled to disk). Default 4 GiB.

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
    srv = ServerState(Path(home), anonymous_read=anonymous_read)
    if inline_upload_max is not None:
        srv.inline_upload_max = inline_upload_max
    if max_upload_bytes is not None:
        srv.max_upload_bytes = max_upload_bytes
    if max_commit_bytes is not None:
        srv.max_commit_bytes = max_commit_bytes
    app.state.hub = srv
    app.add_middleware(BoundedBodies, limit=MAX_JSON_BYTES, streams=_streams)

    @app.exception_handler(HubError)
    async def _hub_error(request: Request, error: HubError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"invalid request: {where}: {first.get('msg', 'malformed')}"
        return error_response(InvalidArgument(message, status=422))

    read_errors = error_responses(401, 403, 404, 422)
    write_errors = error_responses(400, 401, 403, 404, 409, 413, 422)

    @app.get(f"{API}/adapters", response_model=list[AdapterCard], responses=read_errors)
    def search(
        request: Request,
        q: str | None = None,
        base: str | None = None,
        method: str | None = None,
        rank: str | None = None,
        task: list[str] = Query(default=[]),  # noqa: B008
        tag: list[str] = Query(default=[]),  # noqa: B008
        sort: str | None = None,
        limit: int | None = Query(default=None, ge=0, le=100_000),
        all_versions: bool = False,
    ) -> Response:
        """Search cards with the same filters as `hub ls` (latest version of each adapter
        unless `all_versions`); only namespaces the token may read are listed."""
        cards = (
            state(request)
            .registry()
            .search_raw(
                q,
                base=base,
                method=method,
                rank=rank,
                tasks=task,
                tags=tag,
                sort=sort,
                all_versions=all_versions,
            )
        )
        visible = readable(request, cards)
        return JSONResponse(visible[:limit] if limit is not None else visible)

    @app.get(
        f"{API}/adapters/{{namespace}}/{{name}}", response_model=AdapterCard, responses=read_errors
    )
    def card(request: Request, namespace: str, name: str, revision: str | None = None) -> Response:
        """The card of NAMESPACE/NAME at a revision (default: the latest version)."""
        require_read(request, namespace)
        shown = state(request).registry().show(_ref(namespace, name, revision))
        return JSONResponse(shown.model_dump(mode="json"))

    @app.get(
        f"{API}/adapters/{{namespace}}/{{name}}/versions",
        response_model=list[AdapterCard],
        responses=read_errors,
    )
    def versions(request: Request, namespace: str, name: str) -> Response:
        """Every version of NAMESPACE/NAME, oldest first."""
        require_read(request, namespace)
        cards = state(request).registry().versions(_ref(namespace, name, None))
        return JSONResponse([c.model_dump(mode="json") for c in cards])

    @app.post(
        f"{API}/adapters/{{namespace}}/{{name}}/versions",
        response_model=PushedCard,
        responses=write_errors,
    )
    def push(request: Request, namespace: str, name: str, body: NewVersion) -> Response:
        """Register a new version from blobs uploaded with `PUT /blobs/{sha256}`: inspected
        and indexed exactly like `hub push` (identical files make no new version)."""
        token = require_write(request, namespace)
        repo = _ref(namespace, name, None)
        registry = state(request).registry()
        missing = [
            f.sha256 for f in body.files if not state(request).may_reference(token, f.sha256)
        ]
        if missing:
            raise InvalidArgument(f"blobs not uploaded yet: {', '.join(m[:12] for m in missing)}")
        with tempfile.TemporaryDirectory(dir=srv.scratch()) as tmp:
            folder = Path(tmp) / name
            for spec in body.files:
                target = folder / safe_relative_path(spec.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                blob = registry.store.path(spec.sha256)
                if blob.stat().st_size != spec.size:
                    raise InvalidArgument(f"blob {spec.sha256[:12]} is not {spec.size} bytes")
                os.symlink(blob, target)
            result = registry.push(
                folder,
                name=repo,
                tasks=body.tasks,
                tags=body.tags,
                metrics=body.metrics,
                parent=body.parent,
                description=body.description,
                allow_nonfinite=body.allow_nonfinite,
            )
        return JSONResponse({**result.card.model_dump(mode="json"), "created": result.created})

    @app.put(
        f"{API}/adapters/{{namespace}}/{{name}}/aliases/{{alias}}",
        response_model=AdapterCard,
        responses=write_errors,
    )
    def tag(request: Request, namespace: str, name: str, alias: str, body: AliasBody) -> Response:
        """Point ALIAS (e.g. `prod`) at a revision, like `hub tag`."""
        require_write(request, namespace)
        tagged = state(request).registry().tag(_ref(namespace, name, body.revision), alias)
        return JSONResponse(tagged.model_dump(mode="json"))

    @app.delete(
        f"{API}/adapters/{{namespace}}/{{name}}",
        response_model=list[AdapterCard],
        responses=write_errors,
    )
    def remove(
        request: Request, namespace: str, name: str, revision: str | None = None
    ) -> Response:
        """Remove a repository, or one version with `revision`, like `hub rm`."""
        require_write(request, namespace)
        removed = state(request).registry().remove(_ref(namespace, name, revision))
        return JSONResponse([c.model_dump(mode="json") for c in removed])

    @app.post(f"{API}/compose", response_model=PushedCard, responses=write_errors)
    def compose(request: Request, recipe: Recipe) -> Response:
        """Run a compose recipe server-side (same fields as `hub compose run RECIPE.yaml`)."""
        require_write(request, recipe.name.split("/")[0])
        for ref in recipe.inputs:
            require_read(request, ref.split("/")[0])
        result = state(request).registry().compose(recipe)
        return JSONResponse({**result.card.model_dump(mode="json"), "created": result.created})

    @app.head(f"{API}/blobs/{{digest}}", responses=read_errors)
    @app.get(
        f"{API}/blobs/{{digest}}",
        response_class=FileResponse,
        responses={
            **read_errors,
            200: {"content": {"application/octet-stream": {}}},
            206: {"description": "Partial content (HTTP Range)"},
        },
    )
    def get_blob(request: Request, digest: str) -> Response:
        """A stored file by sha256, if a version the caller may read uses it (writers also
        see blobs uploaded for a push not yet made). HTTP Range supported, for resuming."""
        path = _readable_blob(request, check_digest(digest))
        if path is None:
            return Response(status_code=404, headers={"X-Error-Code": "EntryNotFound"})
        return FileResponse(
            path, headers={"ETag": f'"{digest}"'}, media_type="application/octet-stream"
        )

    @app.put(
        f"{API}/blobs/{{digest}}",
        response_model=BlobStored,
        responses=write_errors,
        openapi_extra={
            "requestBody": {"content": {"application/octet-stream": {}}, "required": True}
        },
    )
    async def put_blob(request: Request, digest: str) -> Response:
        """Upload a file's bytes; they become visible only if they hash to `digest`."""
        token = require_write(request, None)
        skip = state(request).may_reference(token, check_digest(digest))
        return JSONResponse(await receive_blob(request, digest, uploader=token.id, skip=skip))

    from hub.server.hf import register_hf_routes
    from hub.server.hf_write import register_hf_write_routes

    register_hf_write_routes(app)  # before the read routes: /{ns}/{name}.git/... is specific
    register_hf_routes(app)
    return app


def _readable_blob(request: Request, digest: str) -> Path | None:
    """The blob's path if the caller may read it: a version it may read uses the blob, or
    (for writers) no version uses it yet. Otherwise None, as for a blob that does not exist,
    so that digests of other namespaces' files cannot be probed."""
    srv = state(request)
    token = caller(request)
    if token is None and not srv.anonymous_read:
        raise AuthError("authentication required: send 'Authorization: Bearer TOKEN'", status=401)
    registry = srv.registry()
    namespaces = blob_namespaces(registry, digest)
    if token is None:
        allowed = bool(namespaces)  # anonymous read: every version, nothing pending
    elif namespaces:
        allowed = any(token.can_read(ns) for ns in namespaces)
    else:
        allowed = bool(token.write)
    if not allowed or not registry.store.has(digest):
        return None
    return registry.store.path(digest)


async def receive_blob(
    request: Request, digest: str, *, uploader: str, skip: bool = False
) -> dict[str, Any]:
    """Stream the body into the store, hashing; publish only on a digest match, and record
    that ``uploader`` (a token id) holds these bytes. With ``skip`` (the blob is stored and
    the uploader may use it already), the body is not read. A client that disconnects
    midway leaves nothing visible (the temp file is removed)."""
    srv = state(request)
    store = srv.registry().store
    if skip:
        return {"sha256": digest, "size": store.path(digest).stat().st_size, "stored": False}
    with BlobWriter(store, limit=srv.max_upload_bytes) as blob:
        async for chunk in request.stream():
            blob.write(chunk)
        _, size = blob.publish(expected=digest)
    srv.uploaded(uploader, digest)
    return {"sha256": digest, "size": size, "stored": True}
