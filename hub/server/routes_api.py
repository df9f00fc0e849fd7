"""The native JSON API under ``/api/hub/v1``: search, cards, versions, push, aliases, remove
and compose. Every route checks the caller's token against the namespace it touches."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from hub.checkpoints import Checkpoint
from hub.server.common import (
    API,
    READ_ERRORS,
    WRITE_ERRORS,
    readable_namespaces,
    require_read,
    require_write,
    stage_files,
    state,
)
from hub.server.shared import check_file_tree, referenced, repo_ref, safe_relative_path
from schemas.api import AliasBody, NewVersion, PushedCard
from schemas.card import AdapterCard
from schemas.errors import InvalidArgument
from schemas.recipe import Recipe

router = APIRouter()


@router.get(f"{API}/adapters", response_model=list[AdapterCard], responses=READ_ERRORS)
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


@router.get(
    f"{API}/adapters/{{namespace}}/{{name}}", response_model=AdapterCard, responses=READ_ERRORS
)
def card(request: Request, namespace: str, name: str, revision: str | None = None) -> Response:
    """The card of NAMESPACE/NAME at a revision (default: the latest version)."""
    require_read(request, namespace)
    shown = state(request).registry().show(repo_ref(namespace, name, revision))
    return JSONResponse(shown.model_dump(mode="json"))


@router.get(
    f"{API}/adapters/{{namespace}}/{{name}}/versions",
    response_model=list[AdapterCard],
    responses=READ_ERRORS,
)
def versions(request: Request, namespace: str, name: str) -> Response:
    """Every version of NAMESPACE/NAME, oldest first."""
    require_read(request, namespace)
    cards = state(request).registry().versions(repo_ref(namespace, name, None))
    return JSONResponse([c.model_dump(mode="json") for c in cards])


@router.post(
    f"{API}/adapters/{{namespace}}/{{name}}/versions",
    response_model=PushedCard,
    responses=WRITE_ERRORS,
)
def push(request: Request, namespace: str, name: str, body: NewVersion) -> Response:
    """Register a new version from blobs uploaded with `PUT /blobs/{sha256}`: inspected
    and indexed exactly like `hub push` (identical files make no new version; a
    multi-adapter folder is one repository per adapter, the others listed in `others`)."""
    token = require_write(request, namespace)
    repo = repo_ref(namespace, name, None)
    srv = state(request)
    registry = srv.registry()
    check_file_tree(f.path for f in body.files)
    parent = referenced(request, body.parent).ref if body.parent is not None else None
    # Shared store lock from the check that every blob is there until the version is
    # indexed: `gc` cannot take one of them meanwhile (hub/uploads.py).
    with (
        registry.store_lock(shared=True),
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
            if registry.store.size(spec.sha256) != spec.size:
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
            trainer=Checkpoint.from_facts(body.trainer.model_dump()) if body.trainer else None,
        )
    others = [{**r.card.model_dump(mode="json"), "created": r.created} for r in result.others]
    return JSONResponse(
        {**result.card.model_dump(mode="json"), "created": result.created, "others": others}
    )


@router.put(
    f"{API}/adapters/{{namespace}}/{{name}}/aliases/{{alias}}",
    response_model=AdapterCard,
    responses=WRITE_ERRORS,
)
def tag(request: Request, namespace: str, name: str, alias: str, body: AliasBody) -> Response:
    """Point ALIAS (e.g. `prod`) at a revision, like `hub tag`."""
    require_write(request, namespace)
    tagged = state(request).registry().tag(repo_ref(namespace, name, body.revision), alias)
    return JSONResponse(tagged.model_dump(mode="json"))


@router.delete(
    f"{API}/adapters/{{namespace}}/{{name}}",
    response_model=list[AdapterCard],
    responses=WRITE_ERRORS,
)
def remove(request: Request, namespace: str, name: str, revision: str | None = None) -> Response:
    """Remove a repository, or one version with `revision`, like `hub rm`."""
    require_write(request, namespace)
    removed = state(request).registry().remove(repo_ref(namespace, name, revision))
    return JSONResponse([c.model_dump(mode="json") for c in removed])


@router.post(f"{API}/compose", response_model=PushedCard, responses=WRITE_ERRORS)
def compose(request: Request, recipe: Recipe) -> Response:
    """Run a compose recipe server-side (same fields as `hub compose run RECIPE.yaml`)."""
    require_write(request, recipe.name.split("/")[0])
    for ref in recipe.inputs:
        referenced(request, ref)
    result = state(request).registry().compose(recipe)
    return JSONResponse({**result.card.model_dump(mode="json"), "created": result.created})
