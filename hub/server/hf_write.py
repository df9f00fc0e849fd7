"""The Hugging Face Hub write protocol: create repo, preupload, Git LFS batch/upload/verify,
and the NDJSON commit. Used by ``HfApi.upload_folder`` and ``PeftModel.push_to_hub`` with
``HF_ENDPOINT`` pointed at the server (Xet disabled: the server never advertises Xet).

A commit is applied to the repository's latest files and pushed through the registry like a
CLI push: the adapter is inspected and indexed, and an invalid one is refused with an error
the client shows. LFS uploads go to a short-lived signed URL (the client sends no token with
them) and become visible only once their bytes hash to the announced oid.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from hub.server.app import receive_blob, safe_relative_path
from hub.server.common import require_write, state
from hub.server.hf import _hf_error
from schemas.errors import AuthError, HubError, InvalidAdapter, InvalidArgument

TICKET_SECONDS = 3600
MAX_COMMIT_BYTES = 64 * 1024 * 1024


def _ticket(secret: bytes, oid: str, expires: int) -> str:
    return hmac.new(secret, f"{oid}:{expires}".encode(), hashlib.sha256).hexdigest()


def register_hf_write_routes(app: FastAPI) -> None:
    secret = os.urandom(32)

    @app.post("/api/repos/create")
    async def create_repo(request: Request) -> Response:
        try:
            body = await request.json()
            repo = f"{body.get('organization') or ''}/{body.get('name') or ''}"
            require_write(request, repo.split("/")[0])
            if body.get("type", "model") not in (None, "model"):
                raise InvalidArgument("this hub stores models (adapters) only")
            created = state(request).registry().create_repo(repo)
        except HubError as error:
            return _hf_error(error)
        url = f"{str(request.base_url).rstrip('/')}/{repo}"
        if not created:
            return JSONResponse(
                {"error": "You already created this model repo", "url": url}, status_code=409
            )
        return JSONResponse({"url": url, "name": repo, "id": repo})

    @app.post("/api/validate-yaml")
    async def validate_yaml(request: Request) -> Response:
        return JSONResponse({"errors": [], "warnings": []})

    @app.post("/api/models/{namespace}/{name}/preupload/{revision}")
    async def preupload(request: Request, namespace: str, name: str, revision: str) -> Response:
        try:
            require_write(request, namespace)
            files = (await request.json()).get("files", [])
            answer = [
                {
                    "path": safe_relative_path(f["path"]),
                    "uploadMode": "lfs" if int(f.get("size", 0)) > 0 else "regular",
                    "shouldIgnore": False,
                }
                for f in files
            ]
        except HubError as error:
            return _hf_error(error)
        return JSONResponse({"files": answer, "commitOid": None})

    @app.post("/{namespace}/{name}.git/info/lfs/objects/batch")
    async def lfs_batch(request: Request, namespace: str, name: str) -> Response:
        try:
            require_write(request, namespace)
            body = await request.json()
            if body.get("operation") != "upload":
                raise InvalidArgument("only LFS uploads go through the batch API here")
        except HubError as error:
            return _hf_error(error)
        store = state(request).registry().store
        base = str(request.base_url).rstrip("/")
        expires = int(time.time()) + TICKET_SECONDS
        objects = []
        for obj in body.get("objects", []):
            oid, size = str(obj.get("oid", "")), int(obj.get("size", 0))
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not store.has(oid):
                ticket = _ticket(secret, oid, expires)
                href = f"{base}/api/hub/v1/lfs/{oid}?expires={expires}&ticket={ticket}"
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

    @app.put("/api/hub/v1/lfs/{oid}")
    async def lfs_upload(request: Request, oid: str, expires: int, ticket: str) -> Response:
        try:
            # Bytes, not str: compare_digest refuses non-ASCII strings (a query can hold any).
            if expires < time.time() or not hmac.compare_digest(
                _ticket(secret, oid, expires).encode(), ticket.encode()
            ):
                raise AuthError("upload link expired or invalid", status=403)
            result = await receive_blob(request, oid)
        except HubError as error:
            return _hf_error(error)
        return JSONResponse(result)

    @app.post("/{namespace}/{name}.git/info/lfs/verify")
    async def lfs_verify(request: Request, namespace: str, name: str) -> Response:
        body = await request.json()
        store = state(request).registry().store
        oid, size = str(body.get("oid", "")), int(body.get("size", -1))
        try:
            ok = store.has(oid) and store.path(oid).stat().st_size == size
        except HubError:
            ok = False
        if not ok:
            return JSONResponse({"message": f"object {oid[:12]} was not uploaded"}, status_code=404)
        return JSONResponse({"message": "ok"})

    @app.post("/api/models/{namespace}/{name}/commit/{revision}")
    async def commit(request: Request, namespace: str, name: str, revision: str) -> Response:
        try:
            require_write(request, namespace)
            raw = await request.body()
            if len(raw) > MAX_COMMIT_BYTES:
                raise InvalidArgument(f"commit payload over {MAX_COMMIT_BYTES} bytes")
            card, created = _apply_commit(request, f"{namespace}/{name}", raw)
        except HubError as error:
            return _hf_error(error)
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "commitUrl": f"{base}/{card.repo}/commit/{card.commit}",
                "commitOid": card.commit,
                "success": True,
                "pullRequestUrl": None,
                "created": created,
            }
        )


def _apply_commit(request: Request, repo: str, raw: bytes) -> tuple[Any, bool]:
    registry = state(request).registry()
    lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
    files: dict[str, str] = {}  # path -> sha256
    try:
        latest = registry.show(repo)
        files = {f.path: f.sha256 for f in latest.files}
    except HubError:
        registry.create_repo(repo)
    header: dict[str, Any] = {}
    for item in lines:
        key, value = item.get("key"), item.get("value") or {}
        if key == "header":
            header = value
        elif key == "file":
            data = (
                base64.b64decode(value["content"])
                if value.get("encoding") == "base64"
                else (str(value["content"]).encode())
            )
            files[safe_relative_path(value["path"])] = registry.store.put_bytes(data)[0]
        elif key == "lfsFile":
            oid = str(value["oid"])
            if not registry.store.has(oid):
                raise InvalidArgument(f"LFS object {oid[:12]} for {value['path']!r} not uploaded")
            files[safe_relative_path(value["path"])] = oid
        elif key == "deletedFile":
            files.pop(value["path"], None)
        elif key == "deletedFolder":
            prefix = value["path"].rstrip("/") + "/"
            files = {p: d for p, d in files.items() if not p.startswith(prefix)}
        else:
            raise InvalidArgument(f"unsupported commit operation {key!r}")
    if "adapter_config.json" not in files:
        raise InvalidAdapter(
            f"{repo}: the commit has no adapter_config.json; this hub stores PEFT adapters"
        )
    scratch = registry.home / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        folder = Path(tmp) / repo.split("/")[1]
        for path, digest in files.items():
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(registry.store.path(digest), target)
        result = registry.push(folder, name=repo, description=header.get("description") or None)
    return result.card, result.created
