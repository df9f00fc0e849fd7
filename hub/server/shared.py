"""What more than one router reads the request with: the file paths of a commit, the
cards a request refers to, and the blobs a caller may read or is sending."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from hub.folders import refuse_ignored
from hub.server.common import blob_namespaces, caller, state
from schemas.card import AdapterCard
from schemas.errors import AdapterNotFound, AuthError, InvalidArgument
from schemas.inputs import check_text
from schemas.refs import AdapterRef, validate_repo_id

UPLOAD_BATCH = 1024 * 1024
"""Bytes of an upload handed to the store's writer at a time."""


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


def repo_ref(namespace: str, name: str, revision: str | None) -> str:
    """``namespace/name[@revision]`` from a route's path, the id checked."""
    repo = validate_repo_id(f"{namespace}/{name}")
    return f"{repo}@{revision}" if revision else repo


def readable_blob(request: Request, digest: str) -> bool:
    """Whether the caller may read the blob and the store holds it: a version it may read
    uses the blob, or the caller uploaded it. Otherwise False, as for a blob that does not
    exist, so that
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
    return allowed and registry.store.has(digest)


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
        return {"sha256": digest, "size": store.size(digest), "stored": False}
    with store.writer(expected=digest, limit=srv.max_upload_bytes) as blob:
        # A local file takes each chunk at once; a remote store's writer sends parts over the
        # network, so it gets a MiB at a time in a worker thread, off the event loop.
        pending = bytearray()
        async for chunk in request.stream():
            if not store.remote:
                blob.write(chunk)
                continue
            pending += chunk
            if len(pending) >= UPLOAD_BATCH:
                await run_in_threadpool(blob.write, bytes(pending))
                pending.clear()
        if pending:
            await run_in_threadpool(blob.write, bytes(pending))
        size = await run_in_threadpool(srv.keep_upload, blob, uploader)
    return {"sha256": digest, "size": size, "stored": True}
