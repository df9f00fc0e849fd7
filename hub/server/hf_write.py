"""The Hugging Face Hub write protocol: create repo, validate-yaml, preupload, Git LFS
batch/upload/verify and the NDJSON commit, as used by ``HfApi.upload_folder``,
``HfApi.create_commit`` and ``PeftModel.push_to_hub`` with ``HF_ENDPOINT`` pointed here.

Xet is never offered. ``preupload`` answers ``regular`` for files up to the server's
``inline_upload_max``: the client then sends them inline in the commit, over plain HTTP,
which is the path clients with ``hf_xet`` installed take (they would send any ``lfs`` file
through Xet). Larger files are ``lfs``: clients with Xet disabled upload them through the
LFS batch API to a short-lived signed URL (the client sends no token there, so the URL names
it, and it works only while that token is not revoked), and they become visible only once
their bytes hash to the announced oid. Every commit is applied to the
repository's latest files and pushed through the registry (``hub.server.hf_commit``).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from hub.registry import PushResult
from hub.server.common import (
    API,
    DIGEST,
    ServerState,
    caller,
    error_responses,
    hf_error_response,
    require_write,
    state,
)
from hub.server.hf import TAGS
from hub.server.hf_commit import apply_commit, read_commit, spool
from hub.server.shared import receive_blob, safe_relative_path
from hub.tokens import Token, active_token
from schemas.api import HfCreateRepo, HfLfsBatch, HfLfsVerify, HfPreupload
from schemas.errors import AuthError, HubError, InvalidArgument, InvalidName
from schemas.refs import validate_repo_id

TICKET_SECONDS = 3600
NDJSON_BODY = {"requestBody": {"content": {"application/x-ndjson": {"schema": {"type": "string"}}}}}


def _ticket(secret: bytes, oid: str, expires: int, who: str) -> str:
    """The signature of an upload URL: for this object, until then, on behalf of this token."""
    return hmac.new(secret, f"{oid}:{expires}:{who}".encode(), hashlib.sha256).hexdigest()


def _repo_of(body: HfCreateRepo, token: Token) -> str:
    """``organization/name``; without an organization, the one namespace the token writes
    to (what the Hub does with the caller's user name)."""
    namespace = body.organization
    if not namespace and "/" in body.name:
        namespace, _, name = body.name.partition("/")
    else:
        name = body.name
    if not namespace:
        scopes = [s for s in token.write if s != "*"]
        if len(scopes) != 1 or "*" in token.write:
            raise InvalidArgument(f"give the namespace: create 'NAMESPACE/{name}'")
        namespace = scopes[0]
    try:
        return validate_repo_id(f"{namespace}/{name}")
    except InvalidName as error:
        raise InvalidArgument(str(error)) from None


ERRORS = error_responses(400, 401, 403, 404, 409, 412, 413, 422)

router = APIRouter(tags=TAGS)


@router.post("/api/repos/create", responses=ERRORS)
def create_repo(request: Request, body: HfCreateRepo) -> Response:
    """Create an empty model repository (its `main` is an initial commit with no files)."""
    try:
        token = caller(request)
        if token is None:
            raise AuthError("authentication required: send 'Authorization: Bearer TOKEN'")
        repo = _repo_of(body, token)
        require_write(request, repo.split("/")[0])
        if body.type not in (None, "model"):
            raise InvalidArgument("this hub stores models (adapters) only")
        created = state(request).registry().create_repo(repo)
    except HubError as error:
        return hf_error_response(error)
    url = f"{str(request.base_url).rstrip('/')}/{repo}"
    if not created:
        return JSONResponse(
            {"error": "You already created this model repo", "url": url}, status_code=409
        )
    return JSONResponse({"url": url, "name": repo, "id": repo})


@router.post("/api/validate-yaml")
def validate_yaml() -> Response:
    """Model card metadata is not validated here: the adapter's files are, at commit."""
    return JSONResponse({"errors": [], "warnings": []})


@router.post("/api/models/{namespace}/{name}/preupload/{revision:path}", responses=ERRORS)
def preupload(
    request: Request, namespace: str, name: str, revision: str, body: HfPreupload
) -> Response:
    """How each file will be sent: inline (`regular`) up to the inline limit, else LFS."""
    srv = state(request)
    try:
        require_write(request, namespace)
        answer = []
        for f in body.files:
            if f.size > srv.max_upload_bytes:
                raise InvalidArgument(
                    f"{f.path!r} is {f.size} bytes, over this hub's limit of"
                    f" {srv.max_upload_bytes}",
                    status=413,
                )
            mode = "regular" if f.size <= srv.inline_upload_max else "lfs"
            answer.append(
                {"path": safe_relative_path(f.path), "uploadMode": mode, "shouldIgnore": False}
            )
    except HubError as error:
        return hf_error_response(error)
    return JSONResponse({"files": answer, "commitOid": None})


@router.get(
    "/api/models/{namespace}/{name}/xet-write-token/{revision:path}", include_in_schema=False
)
@router.get(
    "/api/models/{namespace}/{name}/xet-read-token/{revision:path}", include_in_schema=False
)
def no_xet(request: Request) -> Response:
    limit = state(request).inline_upload_max
    return hf_error_response(
        InvalidArgument(
            f"this hub does not offer Xet storage: files over {limit} bytes go through Git"
            " LFS, which clients with hf_xet installed skip; set HF_HUB_DISABLE_XET=1",
            status=501,
        )
    )


@router.post("/{namespace}/{name}.git/info/lfs/objects/batch", responses=ERRORS)
def lfs_batch(request: Request, namespace: str, name: str, body: HfLfsBatch) -> Response:
    """Git LFS batch API (uploads): a signed upload URL for each object not yet stored."""
    srv = state(request)
    try:
        token = require_write(request, namespace)
        if body.operation != "upload":
            raise InvalidArgument("only LFS uploads go through the batch API here")
    except HubError as error:
        return hf_error_response(error)
    base = str(request.base_url).rstrip("/")
    expires = int(time.time()) + TICKET_SECONDS
    objects = []
    for obj in body.objects:
        entry: dict[str, Any] = {"oid": obj.oid, "size": obj.size, "authenticated": True}
        if not DIGEST.fullmatch(obj.oid):
            entry["error"] = {"code": 422, "message": "invalid oid: expected a sha256"}
        elif obj.size > srv.max_upload_bytes:
            message = f"object over this hub's limit of {srv.max_upload_bytes} bytes"
            entry["error"] = {"code": 422, "message": message}
        elif not srv.may_reference(token, obj.oid):
            ticket = _ticket(srv.lfs_key(), obj.oid, expires, token.id)
            query = f"expires={expires}&who={token.id}&ticket={ticket}"
            href = f"{base}{API}/lfs/{obj.oid}?{query}"
            entry["actions"] = {
                "upload": {"href": href, "expires_in": TICKET_SECONDS},
                "verify": {
                    "href": f"{base}/{namespace}/{name}.git/info/lfs/verify",
                    "expires_in": TICKET_SECONDS,
                },
            }
        objects.append(entry)
    return JSONResponse(
        {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
        media_type="application/vnd.git-lfs+json",
    )


@router.put(
    f"{API}/lfs/{{oid}}",
    responses=ERRORS,
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}}},
)
async def lfs_upload(request: Request, oid: str, expires: int, who: str, ticket: str) -> Response:
    """The signed URL an LFS batch answer points at: stored only if the bytes match."""
    srv = state(request)
    try:
        if (
            not DIGEST.fullmatch(oid)
            or expires < time.time()
            or not hmac.compare_digest(
                _ticket(srv.lfs_key(), oid, expires, who).encode(), ticket.encode()
            )
        ):
            raise AuthError("upload link expired or invalid", status=403)
        active_token(srv.registry(), who)  # and again once the bytes are in
        result = await receive_blob(request, oid, uploader=who)
    except HubError as error:
        return hf_error_response(error)
    return JSONResponse(result)


@router.post("/{namespace}/{name}.git/info/lfs/verify", responses=ERRORS)
def lfs_verify(request: Request, namespace: str, name: str, body: HfLfsVerify) -> Response:
    """Git LFS verify: the object is stored, with the announced size."""
    try:
        token = require_write(request, namespace)
        srv = state(request)
        store = srv.registry().store
        ok = DIGEST.fullmatch(body.oid) and srv.may_reference(token, body.oid)
        if not ok or store.size(body.oid) != body.size:
            raise InvalidArgument(f"object {body.oid[:12]!r} was not uploaded", status=404)
    except HubError as error:
        return hf_error_response(error)
    return JSONResponse({"message": "ok"})


@router.post(
    "/api/models/{namespace}/{name}/commit/{revision:path}",
    responses=ERRORS,
    openapi_extra=NDJSON_BODY,
)
async def commit(
    request: Request, namespace: str, name: str, revision: str, create_pr: str | None = None
) -> Response:
    """Apply an NDJSON commit on top of the latest version; the result is inspected and
    indexed like `hub push` (invalid adapters are refused with the inspection's error)."""
    srv = state(request)
    try:
        token = require_write(request, namespace)
        repo = validate_repo_id(f"{namespace}/{name}")
        if revision != "main":
            raise InvalidArgument(
                f"commits go to 'main' (the next version of {repo}), not {revision!r}"
            )
        if create_pr not in (None, "", "0", "false"):
            raise InvalidArgument("pull requests are not supported here: commit to main")
        spooled = await spool(request, srv.scratch(), srv.max_commit_bytes)
        try:
            result = await run_in_threadpool(_commit, srv, token, repo, spooled)
        finally:
            spooled.unlink(missing_ok=True)
    except HubError as error:
        return hf_error_response(error)
    card = result.card
    base = str(request.base_url).rstrip("/")
    return JSONResponse(
        {
            "commitUrl": f"{base}/{card.repo}/commit/{card.commit}",
            "commitOid": card.commit,
            "success": True,
            "pullRequestUrl": None,
            "created": result.created,
        }
    )


def _commit(srv: ServerState, token: Token, repo: str, spooled: Path) -> PushResult:
    # Runs in a worker thread: reading and storing inline files, inspection and hashing
    # would otherwise stall every other request on the event loop. The store lock is held
    # (shared) from storing the inline files and checking the LFS ones until the version is
    # indexed, so `gc` cannot take a blob of this commit meanwhile (hub/uploads.py).
    registry = srv.registry()
    with registry.store_lock(shared=True):
        parsed = read_commit(
            spooled,
            registry.store,
            upload_limit=srv.max_upload_bytes,
            may_reference=lambda oid: srv.may_reference(token, oid),
        )
        return apply_commit(registry, repo, parsed, srv.base_dirs)
