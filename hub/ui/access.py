"""Who is looking: the viewer of a page, from the login cookie or the API's bearer token.

The same tokens as the API (``hub.tokens``). A namespace the viewer may not read is treated
exactly as one that does not exist: absent from every list, and its pages answer 404 (never
403, which would say it exists). ``hub ui`` (one user, their own registry, 127.0.0.1) reads
everything without a token; ``hub serve --anonymous-read`` lets everyone read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import Response

from hub.server.common import caller, state
from hub.tokens import Token, authenticate
from schemas.errors import AdapterNotFound, AuthError

if TYPE_CHECKING:
    from hub.registry import Registry

COOKIE = "hub_ui_token"
COOKIE_MAX_AGE = 7 * 24 * 3600
"""A week: the token itself is what grants access, and it can be revoked at any time."""


@dataclass(frozen=True)
class UiSettings:
    """How the pages are served: ``local`` for ``hub ui`` (no login: the user's own
    registry), else by ``hub serve`` (tokens, login page)."""

    local: bool = False


@dataclass(frozen=True)
class Viewer:
    token: Token | None
    everything: bool
    """May read every namespace (``hub ui``, anonymous read, or a ``*`` token)."""
    local: bool = False

    @property
    def label(self) -> str:
        if self.local:
            return "local registry"
        return self.token.name if self.token is not None else "anonymous"

    def can_read(self, namespace: str) -> bool:
        return self.everything or (self.token is not None and self.token.can_read(namespace))

    def namespaces(self) -> list[str] | None:
        """The namespaces to search (a SQL filter); None: all of them."""
        if self.everything:
            return None
        if self.token is None:
            return []
        return sorted(set(self.token.read) | set(self.token.write))


def settings(request: Request) -> UiSettings:
    return getattr(request.app.state, "ui", None) or UiSettings()


def viewer_of(request: Request) -> Viewer:
    """The viewer of ``request``: the login cookie's token, else the ``Authorization:
    Bearer`` token (scripts), else anonymous. A cookie whose token was revoked counts as no
    login, and the page clears it."""
    srv = state(request)
    if settings(request).local:
        return Viewer(None, everything=True, local=True)
    token: Token | None = None
    cookie = request.cookies.get(COOKIE)
    if cookie:
        try:
            token = authenticate(srv.registry(), cookie)
        except AuthError:
            request.state.ui_clear_cookie = True
    if token is None:
        token = caller(request)  # an invalid header was refused (401) before any route
    if token is None:
        return Viewer(None, everything=srv.anonymous_read)
    everything = "*" in token.read or "*" in token.write
    return Viewer(token, everything=everything)


def check_readable(viewer: Viewer, repo: str) -> None:
    """Raise the not-found error for ``repo`` unless ``viewer`` may read its namespace."""
    if not viewer.can_read(repo.split("/", 1)[0]):
        raise AdapterNotFound(f"no adapter named {repo!r}", repo=repo)


def login(registry: Registry, presented: str) -> Token:
    """The token a login form presented. Raises AuthError (401) when it is invalid."""
    return authenticate(registry, presented.strip())


def set_cookie(response: Response, token: str, *, secure: bool) -> None:
    # HttpOnly: no script reads it; SameSite=Strict: no other site's page sends it, which is
    # the CSRF defence (no page changes anything anyway).
    response.set_cookie(
        COOKIE,
        token,
        max_age=COOKIE_MAX_AGE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure,
    )


def clear_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")


def same_origin(request: Request) -> bool:
    """Whether a form post comes from one of our pages: its ``Origin`` (browsers send it on
    every POST) names this host. A post from another site is refused."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser (a script posting a token): nothing to forge
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")
