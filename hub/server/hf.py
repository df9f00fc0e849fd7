"""The subset of the Hugging Face Hub HTTP API that ``huggingface_hub`` uses to read models.

``HF_ENDPOINT=http://host:port`` makes ``snapshot_download``, ``hf_hub_download`` and
``PeftModel.from_pretrained(base, "ns/name")`` fetch from the registry unchanged. A repo is a
registry repository, ``main`` its latest version, a version (``v3``), alias or commit any
other revision; every file is served with its sha256 as ETag (its Git LFS oid), and Xet is
never advertised, so clients with hf_xet installed download over plain HTTP.
"""

from __future__ import annotations

from enum import Enum
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from hub.registry import commit_id
from hub.server.common import hf_error_response, require_read, state
from hub.server.downloads import blob_response
from schemas.card import AdapterCard
from schemas.errors import HubError, RevisionNotFound

TAGS: list[str | Enum] = ["huggingface"]

router = APIRouter(tags=TAGS)


def _card(request: Request, namespace: str, name: str, revision: str | None) -> AdapterCard:
    require_read(request, namespace)
    rev = unquote(revision) if revision else None
    ref = f"{namespace}/{name}" + (f"@{rev}" if rev and rev != "main" else "")
    return state(request).registry().show(ref)


def _info(card: AdapterCard) -> dict[str, Any]:
    return {
        "_id": card.commit[:24],
        "id": card.repo,
        "modelId": card.repo,
        "author": card.repo.split("/")[0],
        "sha": card.commit,
        "lastModified": card.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "private": False,
        "disabled": False,
        "gated": False,
        "library_name": "peft",
        "tags": ["peft", card.method, *card.tasks],
        "pipeline_tag": None,
        "cardData": {"base_model": card.base_model, "library_name": "peft"},
        "siblings": [
            {
                "rfilename": f.path,
                "size": f.size,
                "blobId": f.sha256,
                "lfs": {"sha256": f.sha256, "size": f.size, "pointerSize": 134},
            }
            for f in card.files
        ],
        "usedStorage": card.size_bytes,
    }


def _empty_repo_info(request: Request, repo: str, revision: str | None) -> dict[str, Any] | None:
    """A repository created over the HF API before its first commit: its initial, empty state."""
    if revision not in (None, "main"):
        return None
    row = state(request).registry().catalog.repo(repo)
    if row is None or row.last_version:
        return None
    return {
        "_id": repo,
        "id": repo,
        "modelId": repo,
        "sha": commit_id(None, []),
        "private": False,
        "siblings": [],
        "tags": [],
        "library_name": "peft",
    }


@router.get("/api/models/{namespace}/{name}")
@router.get("/api/models/{namespace}/{name}/revision/{revision:path}")
def model_info(
    request: Request, namespace: str, name: str, revision: str | None = None
) -> Response:
    try:
        return JSONResponse(_info(_card(request, namespace, name, revision)))
    except RevisionNotFound as error:
        empty = _empty_repo_info(request, f"{namespace}/{name}", revision)
        return JSONResponse(empty) if empty else hf_error_response(error)
    except HubError as error:
        return hf_error_response(error)


@router.get("/api/models/{namespace}/{name}/tree/{revision}")
@router.get("/api/models/{namespace}/{name}/tree/{revision}/{path:path}")
def tree(
    request: Request,
    namespace: str,
    name: str,
    revision: str,
    path: str = "",
    recursive: bool = False,
) -> Response:
    """The files and folders under PATH (all of them, at any depth, with `recursive`)."""
    try:
        card = _card(request, namespace, name, revision)
    except HubError as error:
        return hf_error_response(error)
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    entries: dict[str, dict[str, Any]] = {}
    for f in card.files:
        if not f.path.startswith(prefix):
            continue
        parts = f.path[len(prefix) :].split("/")
        for depth in range(1, len(parts) if recursive else min(2, len(parts))):
            folder = prefix + "/".join(parts[:depth])
            entries.setdefault(
                folder, {"type": "directory", "oid": card.commit, "size": 0, "path": folder}
            )
        if recursive or len(parts) == 1:
            entries[f.path] = {
                "type": "file",
                "oid": f.sha256,
                "size": f.size,
                "path": f.path,
                "lfs": {"oid": f.sha256, "size": f.size, "pointerSize": 134},
            }
    return JSONResponse(list(entries.values()))


@router.head("/{namespace}/{name}/resolve/{revision}/{path:path}")
@router.get("/{namespace}/{name}/resolve/{revision}/{path:path}")
def resolve(request: Request, namespace: str, name: str, revision: str, path: str) -> Response:
    try:
        card = _card(request, namespace, name, revision)
    except RevisionNotFound as error:
        # A repository created but not yet committed to: it exists and holds no files.
        empty = _empty_repo_info(request, f"{namespace}/{name}", revision)
        return hf_error_response(error, code="EntryNotFound" if empty else None)
    except HubError as error:
        return hf_error_response(error)
    entry = next((f for f in card.files if f.path == path), None)
    if entry is None:
        return hf_error_response(
            RevisionNotFound(f"{card.repo}@v{card.version} has no file {path!r}"),
            code="EntryNotFound",
        )
    srv = state(request)
    store = srv.registry().store
    headers = {
        "X-Repo-Commit": card.commit,
        "ETag": f'"{entry.sha256}"',
        "X-Linked-Etag": f'"{entry.sha256}"',
        "X-Linked-Size": str(entry.size),
        "Accept-Ranges": "bytes",
    }
    try:
        return blob_response(
            request,
            store,
            entry.sha256,
            headers,
            mode=srv.store_downloads,
            expires=srv.presign_expires,
        )
    except HubError as error:  # missing from the store (StoreCorrupted), store down
        return hf_error_response(error)
