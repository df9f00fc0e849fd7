"""Blobs by sha256 over the native API: read one a version the caller may read uses (or
that it uploaded), upload one that becomes visible only if its bytes hash to its name."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from hub.server.common import API, READ_ERRORS, WRITE_ERRORS, check_digest, require_write, state
from hub.server.downloads import blob_response
from hub.server.shared import readable_blob, receive_blob
from schemas.api import BlobStored

router = APIRouter()


@router.head(f"{API}/blobs/{{digest}}", responses=READ_ERRORS)
@router.get(
    f"{API}/blobs/{{digest}}",
    response_class=FileResponse,
    responses={
        **READ_ERRORS,
        200: {"content": {"application/octet-stream": {}}},
        206: {"description": "Partial content (HTTP Range)"},
    },
)
def get_blob(request: Request, digest: str) -> Response:
    """A stored file by sha256, if a version the caller may read uses it, or the caller
    uploaded it (for a push not yet made). HTTP Range supported, for resuming. On an object
    store: 302 to a short-lived presigned URL (unless the server proxies downloads)."""
    if not readable_blob(request, check_digest(digest)):
        return Response(status_code=404, headers={"X-Error-Code": "EntryNotFound"})
    srv = state(request)
    return blob_response(
        request,
        srv.registry().store,
        digest,
        {"ETag": f'"{digest}"'},
        mode=srv.store_downloads,
        expires=srv.presign_expires,
    )


@router.put(
    f"{API}/blobs/{{digest}}",
    response_model=BlobStored,
    responses=WRITE_ERRORS,
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}},
)
async def put_blob(request: Request, digest: str) -> Response:
    """Upload a file's bytes; they become visible only if they hash to `digest`."""
    token = require_write(request, None)
    skip = state(request).may_reference(token, check_digest(digest))
    return JSONResponse(await receive_blob(request, digest, uploader=token.id, skip=skip))
