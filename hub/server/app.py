"""The FastAPI app: the native JSON API under ``/api/hub/v1`` and the Hugging Face protocol.

Every route checks the caller's token against the namespace it touches; uploads are hashed
as they stream in and become visible only when their sha256 matches the one they claim.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from hub.server.common import (
    MAX_JSON_BYTES,
    ServerState,
    error_response,
    readable,
    require_read,
    require_write,
    state,
)
from schemas.errors import HubError, InvalidArgument, StoreCorrupted
from schemas.recipe import Recipe
from schemas.refs import validate_repo_id

API = "/api/hub/v1"
_DIGEST = re.compile(r"[0-9a-f]{64}")


class FileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(max_length=1000)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class NewVersion(BaseModel):
    """A push: the files (already uploaded as blobs) and the annotations."""

    model_config = ConfigDict(extra="forbid")
    files: list[FileSpec] = Field(min_length=1, max_length=10_000)
    tasks: list[str] = Field(default_factory=list, max_length=100)
    tags: dict[str, str] = Field(default_factory=dict)
    metrics: list[str] = Field(default_factory=list, max_length=100)
    parent: str | None = None
    description: str | None = Field(default=None, max_length=10_000)
    allow_nonfinite: bool = False


class AliasBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    revision: str = Field(max_length=100)


def safe_relative_path(path: str) -> str:
    """A file path inside an adapter folder: relative, no ``..``, no empty or hidden tricks."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise InvalidArgument(f"invalid file path {path!r}: must stay inside the adapter folder")
    return path


def _ref(namespace: str, name: str, revision: str | None) -> str:
    repo = validate_repo_id(f"{namespace}/{name}")
    return f"{repo}@{revision}" if revision else repo


def create_app(home: str | os.PathLike[str], *, anonymous_read: bool = False) -> FastAPI:
    """The team hub over the registry at ``home``.

    Example:
        >>> import uvicorn                                                   # doctest: +SKIP
        >>> uvicorn.run(create_app("/srv/hub"), host="127.0.0.1", port=8000)
    """
    app = FastAPI(
        title="hub",
        version="1",
        description="Adapter registry: native JSON API and the Hugging Face Hub protocol.",
    )
    app.state.hub = ServerState(Path(home), anonymous_read=anonymous_read)

    @app.exception_handler(HubError)
    async def _hub_error(request: Request, error: HubError) -> JSONResponse:
        return error_response(error)

    @app.middleware("http")
    async def _bound_json_bodies(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length")
        is_blob = request.url.path.startswith((f"{API}/blobs/", f"{API}/lfs/"))
        is_blob = is_blob or "/commit/" in request.url.path  # bounded by the commit route
        if not is_blob and length and length.isdigit() and int(length) > MAX_JSON_BYTES:
            return error_response(InvalidArgument(f"request body over {MAX_JSON_BYTES} bytes"))
        response: Response = await call_next(request)
        return response

    @app.get(f"{API}/adapters")
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
    ) -> list[dict[str, Any]]:
        """Search cards with the same filters as `hub ls`."""
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
        return visible[:limit] if limit is not None else visible

    @app.get(f"{API}/adapters/{{namespace}}/{{name}}")
    def card(
        request: Request, namespace: str, name: str, revision: str | None = None
    ) -> dict[str, Any]:
        """The card of NAMESPACE/NAME at a revision (default: latest)."""
        require_read(request, namespace)
        return (
            state(request).registry().show(_ref(namespace, name, revision)).model_dump(mode="json")
        )

    @app.get(f"{API}/adapters/{{namespace}}/{{name}}/versions")
    def versions(request: Request, namespace: str, name: str) -> list[dict[str, Any]]:
        require_read(request, namespace)
        return [
            c.model_dump(mode="json")
            for c in state(request).registry().versions(_ref(namespace, name, None))
        ]

    @app.post(f"{API}/adapters/{{namespace}}/{{name}}/versions")
    def push(request: Request, namespace: str, name: str, body: NewVersion) -> dict[str, Any]:
        """Register a new version from blobs uploaded with PUT /blobs/{sha256}."""
        require_write(request, namespace)
        repo = _ref(namespace, name, None)
        registry = state(request).registry()
        missing = [f.sha256 for f in body.files if not registry.store.has(f.sha256)]
        if missing:
            raise InvalidArgument(f"blobs not uploaded yet: {', '.join(m[:12] for m in missing)}")
        with tempfile.TemporaryDirectory(dir=_scratch(registry.home)) as tmp:
            folder = Path(tmp) / name
            for spec in body.files:
                target = folder / safe_relative_path(spec.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                blob = registry.store.path(spec.sha256)
                if blob.stat().st_size != spec.size:
                    raise StoreCorrupted(f"blob {spec.sha256[:12]} is not {spec.size} bytes")
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
        return {**result.card.model_dump(mode="json"), "created": result.created}

    @app.put(f"{API}/adapters/{{namespace}}/{{name}}/aliases/{{alias}}")
    def tag(
        request: Request, namespace: str, name: str, alias: str, body: AliasBody
    ) -> dict[str, Any]:
        require_write(request, namespace)
        ref = _ref(namespace, name, body.revision)
        return state(request).registry().tag(ref, alias).model_dump(mode="json")

    @app.delete(f"{API}/adapters/{{namespace}}/{{name}}")
    def remove(
        request: Request, namespace: str, name: str, revision: str | None = None
    ) -> list[dict[str, Any]]:
        require_write(request, namespace)
        removed = state(request).registry().remove(_ref(namespace, name, revision))
        return [c.model_dump(mode="json") for c in removed]

    @app.post(f"{API}/compose")
    def compose(request: Request, recipe: Recipe) -> dict[str, Any]:
        """Run a compose recipe server-side (same fields as `hub compose run RECIPE.yaml`)."""
        require_write(request, recipe.name.split("/")[0])
        for ref in recipe.inputs:
            require_read(request, ref.split("/")[0])
        result = state(request).registry().compose(recipe)
        return {**result.card.model_dump(mode="json"), "created": result.created}

    @app.head(f"{API}/blobs/{{digest}}")
    @app.get(f"{API}/blobs/{{digest}}")
    def get_blob(request: Request, digest: str) -> Response:
        """A stored file by sha256 (HTTP Range supported, for resumable downloads)."""
        path = _readable_blob(request, digest)
        if path is None:
            return Response(status_code=404, headers={"X-Error-Code": "EntryNotFound"})
        return FileResponse(
            path, headers={"ETag": f'"{digest}"'}, media_type="application/octet-stream"
        )

    @app.put(f"{API}/blobs/{{digest}}")
    async def put_blob(request: Request, digest: str) -> dict[str, Any]:
        """Upload a blob; it becomes visible only if its bytes hash to ``digest``."""
        require_write(request, None)
        if not _DIGEST.fullmatch(digest):
            raise InvalidArgument(f"invalid sha256 {digest!r}")
        return await receive_blob(request, digest)

    from hub.server.hf import register_hf_routes
    from hub.server.hf_write import register_hf_write_routes

    register_hf_write_routes(app)  # before the read routes: /{ns}/{name}.git/... is specific
    register_hf_routes(app)
    return app


def _scratch(home: Path) -> Path:
    scratch = home / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    return scratch


def _readable_blob(request: Request, digest: str) -> Path | None:
    """The blob's path if some version the caller may read uses it."""
    if not _DIGEST.fullmatch(digest):
        raise InvalidArgument(f"invalid sha256 {digest!r}")
    registry = state(request).registry()
    namespaces = {
        row[0]
        for row in registry.index.conn.execute(
            "SELECT DISTINCT r.namespace FROM files f JOIN versions v ON v.id = f.version_id"
            " JOIN repos r ON r.id = v.repo_id WHERE f.sha256 = ?",
            (digest,),
        )
    }
    allowed = False
    for namespace in sorted(namespaces):
        with contextlib.suppress(HubError):
            require_read(request, namespace)
            allowed = True
            break
    if not namespaces:
        # Uploaded but not yet part of a version: only writers see it (to resume/skip uploads).
        with contextlib.suppress(HubError):
            require_write(request, None)
            allowed = registry.store.has(digest)
    if not allowed or not registry.store.has(digest):
        if namespaces and not allowed:
            require_read(request, sorted(namespaces)[0])  # raises the right 401/403
        return None
    return registry.store.path(digest)


async def receive_blob(request: Request, digest: str) -> dict[str, Any]:
    """Stream the body into the store's temp area, hashing; publish only on a digest match.
    A client that disconnects midway leaves nothing visible (the temp file is removed)."""
    srv = state(request)
    store = srv.registry().store
    if store.has(digest):
        return {"sha256": digest, "size": store.path(digest).stat().st_size, "stored": False}
    tmp = store.temp_path()
    hasher = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > srv.max_upload_bytes:
                    raise InvalidArgument(f"upload over {srv.max_upload_bytes} bytes")
                hasher.update(chunk)
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        if hasher.hexdigest() != digest:
            raise InvalidArgument(
                f"uploaded bytes hash to {hasher.hexdigest()[:12]}, not {digest[:12]}: refused"
            )
        store.publish(tmp, digest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return {"sha256": digest, "size": size, "stored": True}
