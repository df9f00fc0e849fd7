"""What every route shares: a registry per worker thread, token checks, error responses."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from hub.registry import Registry
from hub.tokens import Token, authenticate
from schemas.errors import (
    AdapterNotFound,
    AuthError,
    HubError,
    OutputExists,
    RevisionNotFound,
    StoreCorrupted,
)

MAX_JSON_BYTES = 1024 * 1024

STATUS: dict[type[HubError], int] = {
    AdapterNotFound: 404,
    RevisionNotFound: 404,
    OutputExists: 409,
    StoreCorrupted: 500,
}


def status_of(error: HubError) -> int:
    if isinstance(error, AuthError):
        return int(error.context.get("status", 401))
    return next((code for cls, code in STATUS.items() if isinstance(error, cls)), 400)


def header_safe(text: str) -> str:
    """HTTP header values are latin-1: escape anything else (a name may hold any Unicode)."""
    return text[:500].encode("ascii", "backslashreplace").decode().replace("\n", " ")


def error_response(error: HubError) -> JSONResponse:
    """``{"error": {"code", "message"}}`` plus the headers the HF client reads."""
    return JSONResponse(
        {"error": {"code": error.code, "message": str(error)}},
        status_code=status_of(error),
        headers={"X-Error-Code": error.code, "X-Error-Message": header_safe(str(error))},
    )


@dataclass
class ServerState:
    home: Path
    anonymous_read: bool = False
    max_upload_bytes: int = 64 * 1024**3
    _local: threading.local = field(default_factory=threading.local)

    def registry(self) -> Registry:
        # SQLite connections stay in the thread that opened them: one registry per worker.
        reg = getattr(self._local, "registry", None)
        if reg is None:
            reg = self._local.registry = Registry(self.home)
        return reg


def state(request: Request) -> ServerState:
    return request.app.state.hub


def caller(request: Request) -> Token | None:
    """The request's token (``Authorization: Bearer``), or None when anonymous."""
    header = request.headers.get("authorization", "")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthError("malformed Authorization header: expected 'Bearer TOKEN'", status=401)
    return authenticate(state(request).registry(), value.strip())


def require_read(request: Request, namespace: str) -> Token | None:
    token = caller(request)
    if token is None:
        if state(request).anonymous_read:
            return None
        raise AuthError("authentication required: send 'Authorization: Bearer TOKEN'", status=401)
    if not token.can_read(namespace):
        raise AuthError(f"token {token.name!r} may not read namespace {namespace!r}", status=403)
    return token


def require_write(request: Request, namespace: str | None) -> Token:
    token = caller(request)
    if token is None:
        raise AuthError("authentication required: send 'Authorization: Bearer TOKEN'", status=401)
    allowed = token.can_write(namespace) if namespace is not None else bool(token.write)
    if not allowed:
        where = f"namespace {namespace!r}" if namespace else "any namespace"
        raise AuthError(f"token {token.name!r} may not write to {where}", status=403)
    return token


def readable(request: Request, cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only the cards of namespaces the caller may read."""
    token = caller(request)
    if token is None:
        if state(request).anonymous_read:
            return cards
        raise AuthError("authentication required: send 'Authorization: Bearer TOKEN'", status=401)
    return [c for c in cards if token.can_read(c["repo"].split("/")[0])]
