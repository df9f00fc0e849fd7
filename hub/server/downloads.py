"""How the server answers a download of a blob: from its own disk, by redirecting to the
object store, or by streaming the store's bytes through.

- A store with files on this machine (the local folder): ``FileResponse`` (Range, sendfile).
- A store that hands out presigned URLs (S3) in ``redirect`` mode, the default: GET answers
  ``302`` to a URL valid for ``presign_expires`` seconds, so the bytes never pass through a
  worker; the response's own headers (the HF metadata, the ETag) are on the 302 too, with
  ``Cache-Control: no-store`` (the URL expires; a cache must not keep the redirect). HEAD
  answers ``200`` with the metadata itself: ``huggingface_hub`` follows only relative
  redirects on HEAD and reads the metadata off the response it gets. A client's Range header
  goes along with the redirect, so resumed downloads work against the store.
- ``proxy`` mode (a store clients cannot reach): the server streams the store's bytes,
  honouring a single-range ``Range`` header.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from fastapi import Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from hub.blobstore import CHUNK, BlobStore

DOWNLOAD_MODES = ("redirect", "proxy")
"""``hub serve --store-downloads``: where the bytes of a download come from."""
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def blob_response(
    request: Request,
    store: BlobStore,
    digest: str,
    headers: Mapping[str, str],
    *,
    mode: str = "redirect",
    expires: int = 300,
) -> Response:
    """The answer to a GET or HEAD of blob ``digest`` (see the module docstring), with
    ``headers`` (ETag, the HF metadata) on it whichever way it goes.

    Raises:
        StoreCorrupted: the blob is missing from the store (``missing``).
    """
    local = store.local_path(digest)
    if local is not None:
        return FileResponse(local, headers=dict(headers), media_type="application/octet-stream")
    size = store.size(digest)  # raises `missing` for a blob the index names and S3 lacks
    if request.method == "HEAD":
        return Response(
            status_code=200,
            headers={**headers, "Content-Length": str(size), "Accept-Ranges": "bytes"},
            media_type="application/octet-stream",
        )
    url = store.download_url(digest, expires) if mode == "redirect" else None
    if url is not None:
        return Response(
            status_code=302,
            headers={**headers, "Location": url, "Cache-Control": "no-store"},
        )
    return _streamed(store, digest, size, request.headers.get("range"), headers)


def _streamed(
    store: BlobStore, digest: str, size: int, range_header: str | None, headers: Mapping[str, str]
) -> Response:
    start, end, status = 0, size, 200
    extra = {"Accept-Ranges": "bytes"}
    match = _RANGE.fullmatch(range_header.strip()) if range_header else None
    if match and (match.group(1) or match.group(2)):
        first, last = match.group(1), match.group(2)
        if first:
            start, end = int(first), min(size, int(last) + 1) if last else size
        else:  # a suffix: the last N bytes
            start, end = max(0, size - int(last)), size
        if start >= size or end <= start:
            return Response(
                status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"}
            )
        status = 206
        extra["Content-Range"] = f"bytes {start}-{end - 1}/{size}"

    def chunks() -> Iterator[bytes]:
        with store.open(digest, start, end) as fh:
            while chunk := fh.read(CHUNK):
                yield chunk

    return StreamingResponse(
        chunks(),
        status_code=status,
        headers={**headers, **extra, "Content-Length": str(end - start)},
        media_type="application/octet-stream",
    )
