"""One table between ``HubError`` kinds and HTTP, read in both directions.

The server answers an error with its kind's status and ``{"error": {"code", "message"}}``
(``X-Error-Code: code``), or on the Hugging Face routes with the Hub's own ``{"error":
message}`` and the ``X-Error-Code`` that ``huggingface_hub`` reads; a client turns either back
into the same kind (``error_from_http``), as ``huggingface_hub.hf_raise_for_status`` does.
Every kind has a row, so a new one cannot be mapped one way only (tests round-trip each).

Example:
    >>> status, body, headers = encode_error(AdapterNotFound("no adapter 'team/x'"), "gone")
    >>> status, body
    (404, {'error': {'code': 'adapter_not_found', 'message': 'gone'}})
    >>> error_from_http(404, headers, b'{"error": "gone"}')  # an HF-shaped body
    AdapterNotFound('gone')
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple, Protocol

from schemas.errors import (
    AdapterNotFound,
    AliasConflict,
    AuthError,
    ForeignFormat,
    HeadMoved,
    HubError,
    IncompatibleAdapters,
    IndexDamaged,
    IndexUnavailable,
    InsufficientDiskSpace,
    InvalidAdapter,
    InvalidArgument,
    InvalidData,
    InvalidName,
    InvalidRecipe,
    OutputExists,
    RevisionNotFound,
    SearchRejected,
    StoreCorrupted,
    StoreUnavailable,
    UnsafeFormat,
)


class Wire(NamedTuple):
    """How one kind of error travels over HTTP."""

    status: int
    """The status when the error names none itself (``HubError(..., status=413)`` does)."""
    hf_code: str | None = None
    """``X-Error-Code`` on the Hugging Face routes, the one ``huggingface_hub`` reads."""
    hf_status: int | None = None
    """The status on the Hugging Face routes, when it is not ``status``."""


HTTP: dict[type[HubError], Wire] = {
    HubError: Wire(400),
    # The HF client reads a malformed id as "repository not found".
    InvalidName: Wire(400, "RepoNotFound", hf_status=404),
    AdapterNotFound: Wire(404, "RepoNotFound"),
    RevisionNotFound: Wire(404, "RevisionNotFound"),
    InvalidAdapter: Wire(400),
    UnsafeFormat: Wire(400),
    ForeignFormat: Wire(400),
    IncompatibleAdapters: Wire(400),
    InvalidRecipe: Wire(400),
    InvalidArgument: Wire(400),
    # What the Hub answers a commit whose parentCommit is no longer the head.
    HeadMoved: Wire(412),
    OutputExists: Wire(409),
    InsufficientDiskSpace: Wire(400),
    AuthError: Wire(401),
    StoreCorrupted: Wire(500),
    # The index is the server's own trouble, not the request's: a client may retry the
    # first (a lock held too long, a full disk), an operator must restore the second.
    IndexUnavailable: Wire(503),
    IndexDamaged: Wire(500),
    # The object store down or refusing: retryable, as the index's own trouble is.
    StoreUnavailable: Wire(503),
    AliasConflict: Wire(400),
    InvalidData: Wire(400),
    SearchRejected: Wire(400),
}

_BY_CODE: dict[str, type[HubError]] = {cls.code: cls for cls in HTTP}
# A kind whose HF status is borrowed (InvalidName's 404) is not what its code stands for:
# "RepoNotFound" comes back as AdapterNotFound.
_BY_HF_CODE: dict[str, type[HubError]] = {
    wire.hf_code: cls for cls, wire in HTTP.items() if wire.hf_code and wire.hf_status is None
}


def wire_of(error: HubError) -> Wire:
    """The row of ``error``'s kind (its nearest class that has one)."""
    return next(HTTP[cls] for cls in type(error).__mro__ if cls in HTTP)


def status_of(error: HubError) -> int:
    """The HTTP status of ``error``: its ``status`` context if it has one, else by kind."""
    if "status" in error.context:
        return int(error.context["status"])
    return wire_of(error).status


def header_safe(text: str) -> str:
    """HTTP header values are latin-1: escape anything else (a name may hold any Unicode)."""
    return text[:500].encode("ascii", "backslashreplace").decode().replace("\n", " ")


def encode_error(
    error: HubError, message: str, *, hf: bool = False
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, body, headers)`` of the native answer to ``error``, ``message`` being the
    text a client may see; with ``hf``, the body is the Hugging Face Hub's ``{"error":
    message}`` (the code stays in ``X-Error-Code``)."""
    body: dict[str, Any] = {"error": message if hf else {"code": error.code, "message": message}}
    headers = {"X-Error-Code": error.code, "X-Error-Message": header_safe(message)}
    return status_of(error), body, headers


def encode_hf_error(
    error: HubError, message: str, code: str | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, body, headers)`` of a Hugging Face route's answer to ``error``: the code
    ``huggingface_hub`` reads (``code``, e.g. ``EntryNotFound``, else the kind's own, else
    none) and the status it expects."""
    wire = wire_of(error)
    code = code or wire.hf_code
    if wire.hf_status is not None:
        code = wire.hf_code
    headers = {"X-Error-Message": header_safe(message)}
    if code:
        headers["X-Error-Code"] = code
    status = wire.hf_status or status_of(error)
    return status, {"error": message}, headers


class _Headers(Protocol):
    """A dict, or the ``email.message.Message`` that urllib gives for response headers."""

    def get(self, name: str, default: str, /) -> Any: ...


def error_from_http(status: int, headers: _Headers, body: bytes) -> HubError:
    """The ``HubError`` an error answer stands for: the kind its code names (in the body, or
    in ``X-Error-Code`` for a Hugging Face ``{"error": message}``), with its ``status``.
    A body that is neither is a plain ``HubError`` quoting it."""
    try:
        payload = json.loads(body)["error"]
        if isinstance(payload, str):
            payload = {"code": headers.get("X-Error-Code", ""), "message": payload}
        code, message = payload["code"], payload["message"]
    except (ValueError, KeyError, TypeError):
        return HubError(f"server answered {status}: {body[:200]!r}")
    cls = _BY_CODE.get(code) or _BY_HF_CODE.get(code) or HubError
    return cls(message, status=status)
