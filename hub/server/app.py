"""The FastAPI app: the native JSON API under ``/api/hub/v1`` and the Hugging Face protocol.

Every route checks the caller's token against the namespace it touches; uploads are hashed
as they stream in and become visible only when their sha256 matches the one they claim.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response

from hub.folders import refuse_ignored
from hub.locks import file_lock
from hub.server.common import (
    BlobWriter,
    BoundedBodies,
    ServerState,
    blob_namespaces,
    caller,
    check_digest,
    error_response,
    error_responses,
    readable_namespaces,
    require_read,
    require_write,
    stage_files,
    state,
)
from schemas.api import MAX_JSON_BYTES, AliasBody, BlobStored, NewVersion, PushedCard
from schemas.card import AdapterCard
from schemas.errors import AdapterNotFound, AuthError, HubError, InvalidArgument
from schemas.inputs import check_text
from schemas.recipe import Recipe
from schemas.refs import AdapterRef, validate_repo_id

API = "/api/hub/v1"
_STREAMED = re.compile(rf"PUT {API}/(blobs|lfs)/[^/]*|POST /api/models/[^/]+/[^/]+/commit/.*")


def _streams(method: str, path: str) -> bool:
    """Routes whose bodies are uploads, streamed and bounded by the route itself."""
    return _STREAMED.fullmatch(f"{method} {path}") is not None


def safe_relative_path(path: str) -> str:
    """A file path inside an adapter folder: relative, no ``..``, no empty or hidden tricks."""
    check_text(path, "file path")
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


def check_file_tree(paths: Iterable[str]) -> None:
    """Refuse file paths that cannot all be files of one folder: a path given twice, or one
    that is also another's folder (``a`` and ``a/b``)."""
    files: set[str] = set()
    for path in paths:
        if path in files:
            raise InvalidArgument(f"file {path!r} is listed twice: give each path once")
        files.add(path)
    folders = {path.rsplit("/", i)[0] for path in files for i in range(1, path.count("/") + 1)}
    for clash in sorted(files & folders):
        inside = min(p for p in files if p.startswith(clash + "/"))
        raise InvalidArgument(
            f"file {clash!r} is also the folder of {inside!r}: a path is a file or a folder"
        )


def referenced(request: Request, ref: str) -> AdapterCard:
    """The card ``ref`` (a parent, a compose input) names, for a caller that may read it.

    A repository the caller may not read is answered exactly as one that does not exist, so
    references cannot probe other namespaces."""
    registry = state(request).registry()
    parsed = AdapterRef.parse(ref)
    hidden = AdapterNotFound(
        f"no adapter {parsed.repo!r} that this token may read", repo=parsed.repo
    )
    token = caller(request)
    if token is None and not state(request).anonymous_read:
        raise AuthError("authentication required: send 'Authorization: Bearer TOKEN'", status=401)
    if token is not None and not token.can_read(parsed.namespace):
        raise hidden
    try:
        return registry.show(parsed)
    except AdapterNotFound:
        raise hidden from None


def _ref(namespace: str, name: str, revision: str | None) -> str:
    repo = validate_repo_id(f"{namespace}/{name}")
    return f"{repo}@{revision}" if revision else repo


def create_app(
    home: str | os.PathLike[str],
    *,
    db: str | None = None,
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
    srv = ServerState(Path(home), anonymous_read=anonymous_read, db=db)
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

    read_errors = error_responses(401, 403, 404, 422)
    write_errors = error_responses(400, 401, 403, 404, 409, 413, 422)

    @app.get(f"{API}/adapters", response_model=list[AdapterCard], responses=read_errors)
    def search(
        request: Request,
        q: str | None = None,
        base: str | None = None,
        method: str | None = None,
        library: str | None = None,
        rank: str | None = None,
        task: list[str] = Query(default=[]),  # noqa: B008
        tag: list[str] = Query(default=[]),  # noqa: B008
        sort: str | None = None,
        limit: int | None = Query(default=None, ge=0, le=100_000),
        all_versions: bool = False,
        where: list[str] = Query(default=[]),  # noqa: B008
    ) -> Response:
        """Search cards with the same filters as `hub ls` (latest version of each adapter
        unless `all_versions`); only namespaces the token may read are listed."""
        # The namespaces and the limit are part of the query: no row the caller can't read,
        # and none past the limit, is loaded.
        namespaces = readable_namespaces(request)
        cards = (
            state(request)
            .registry()
            .search_raw(
                q,
                base=base,
                method=method,
                library=library,
                rank=rank,
                tasks=task,
                tags=tag,
                sort=sort,
                limit=limit,
                all_versions=all_versions,
                where=where,
                namespaces=namespaces,
            )
        )
        return JSONResponse(cards)

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
        and indexed exactly like `hub push` (identical files make no new version; a
        multi-adapter folder is one repository per adapter, the others listed in `others`)."""
        token = require_write(request, namespace)
        repo = _ref(namespace, name, None)
        registry = state(request).registry()
        check_file_tree(f.path for f in body.files)
        parent = referenced(request, body.parent).ref if body.parent is not None else None
        # Shared store lock from the check that every blob is there until the version is
        # indexed: `gc` cannot take one of them meanwhile (hub/uploads.py).
        with (
            file_lock(registry.lock_path, shared=True),
            tempfile.TemporaryDirectory(dir=srv.scratch()) as tmp,
        ):
            missing = [f.sha256 for f in body.files if not srv.may_reference(token, f.sha256)]
            if missing:
                raise InvalidArgument(
                    f"blobs not uploaded yet: {', '.join(m[:12] for m in missing)}"
                    " (send them with PUT /blobs/SHA256, then push again)"
                )
            for spec in body.files:
                safe_relative_path(spec.path)
                if registry.store.path(spec.sha256).stat().st_size != spec.size:
                    raise InvalidArgument(f"blob {spec.sha256[:12]} is not {spec.size} bytes")
            folder = stage_files(
                registry, Path(tmp) / name, {spec.path: spec.sha256 for spec in body.files}
            )
            result = registry.push(
                folder,
                name=repo,
                tasks=body.tasks,
                tags=body.tags,
                metrics=body.metrics,
                parent=parent,
                description=body.description,
                allow_nonfinite=body.allow_nonfinite,
                base_dirs=srv.base_dirs,
            )
        others = [{**r.card.model_dump(mode="json"), "created": r.created} for r in result.others]
        return JSONResponse(
            {**result.card.model_dump(mode="json"), "created": result.created, "others": others}
        )

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
            referenced(request, ref)
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
        """A stored file by sha256, if a version the caller may read uses it, or the caller
        uploaded it (for a push not yet made). HTTP Range supported, for resuming."""
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

    from hub.server.evals import router as evals_router
    from hub.server.hf import register_hf_routes
    from hub.server.hf_write import register_hf_write_routes
    from hub.ui import mount_ui

    mount_ui(app)  # the web page under /ui/ (and `/` for browsers), before /{ns}/{name}/...

    app.include_router(evals_router)

    register_hf_write_routes(app)  # before the read routes: /{ns}/{name}.git/... is specific
    register_hf_routes(app)
    return app


def _readable_blob(request: Request, digest: str) -> Path | None:
    """The blob's path if the caller may read it: a version it may read uses the blob, or
    the caller uploaded it. Otherwise None, as for a blob that does not exist, so that
    digests of other namespaces' files cannot be probed, nor a blob `hub rm` took down or
    another token's pending upload be read."""
    srv = state(request)
    token = caller(request)
    if token is None and not srv.anonymous_read:
        raise AuthError("authentication required: send 'Authorization: Bearer TOKEN'", status=401)
    registry = srv.registry()
    namespaces = blob_namespaces(registry, digest)
    if token is None:
        allowed = bool(namespaces)  # anonymous read: every version, nothing pending
    else:
        allowed = any(token.can_read(ns) for ns in namespaces) or srv.uploaded_by(token, digest)
    if not allowed or not registry.store.has(digest):
        return None
    return registry.store.path(digest)


async def receive_blob(
    request: Request, digest: str, *, uploader: str, skip: bool = False
) -> dict[str, Any]:
    """Stream the body into the store, hashing; publish only on a digest match, and record
    that ``uploader`` (a token id, still active at the end) holds these bytes: the record
    keeps `gc` off the blob until its commit (hub/uploads.py). With ``skip`` (the blob is
    stored and the uploader may use it already), the body is not read. A client that
    disconnects midway leaves nothing visible (the temp file is removed)."""
    srv = state(request)
    store = srv.registry().store
    if skip:
        return {"sha256": digest, "size": store.path(digest).stat().st_size, "stored": False}
    with BlobWriter(store, limit=srv.max_upload_bytes) as blob:
        async for chunk in request.stream():
            blob.write(chunk)
        size = await run_in_threadpool(srv.keep_upload, blob, digest, uploader)
    return {"sha256": digest, "size": size, "stored": True}
