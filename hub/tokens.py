"""Access tokens for the team server: created once, stored hashed, scoped per namespace.

A token reads ``hub_<id>_<secret>``; the index keeps ``sha256(secret)`` and the scopes. A
token with write access to a namespace can read it too. ``*`` stands for every namespace.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hub.catalog.base import TokenRow
from hub.catalog.rows import utcnow
from schemas.errors import AuthError, InvalidArgument

if TYPE_CHECKING:
    from hub.registry import Registry


@dataclass(frozen=True)
class Token:
    id: str
    name: str
    read: tuple[str, ...]
    write: tuple[str, ...]
    created_at: str
    revoked_at: str | None = None

    def can_read(self, namespace: str) -> bool:
        scopes = self.read + self.write
        return "*" in scopes or namespace in scopes

    def can_write(self, namespace: str) -> bool:
        return "*" in self.write or namespace in self.write


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_scopes(scopes: list[str], option: str) -> None:
    from schemas.refs import validate_part

    for scope in scopes:
        if scope != "*":
            try:
                validate_part(scope, "namespace", scope)
            except Exception:
                raise InvalidArgument(
                    f"invalid {option} {scope!r}: give a namespace or '*'"
                ) from None


def create_token(registry: Registry, name: str, *, read: list[str], write: list[str]) -> str:
    """Create a token and return it (the only time it is shown in full)."""
    if not name.strip():
        raise InvalidArgument("invalid --name '': give the token a label")
    if not read and not write:
        raise InvalidArgument("a token needs at least one --read or --write namespace")
    _check_scopes(read, "--read")
    _check_scopes(write, "--write")
    token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    registry.catalog.add_token(
        TokenRow(
            token_id, name, _digest(secret), tuple(sorted(read)), tuple(sorted(write)), utcnow()
        )
    )
    return f"hub_{token_id}_{secret}"


def _token(row: TokenRow) -> Token:
    return Token(row.id, row.name, row.read, row.write, row.created_at, row.revoked_at)


def list_tokens(registry: Registry) -> list[Token]:
    return [_token(row) for row in registry.catalog.tokens()]


def revoke_token(registry: Registry, token_id: str) -> Token:
    if not registry.catalog.revoke_token(token_id, utcnow()):
        raise InvalidArgument(f"no active token with id {token_id!r} (see `hub token ls`)")
    return next(t for t in list_tokens(registry) if t.id == token_id)


def active_token(registry: Registry, token_id: str) -> Token:
    """The token with id ``token_id``, if it is not revoked: what a signed upload link checks
    when it is used (it was issued to that token, and must die with it).

    Raises:
        AuthError: no such token, or it was revoked (403).
    """
    row = registry.catalog.token(token_id)
    if row is None or row.revoked_at:
        raise AuthError("the token this upload link was issued to is revoked", status=403)
    return _token(row)


def authenticate(registry: Registry, presented: str) -> Token:
    """The token ``presented`` names, if its secret matches (compared in constant time)."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != "hub":
        raise AuthError("invalid token", status=401)
    row = registry.catalog.token(parts[1])
    expected = row.hash if row else _digest("no such token")
    if not hmac.compare_digest(expected, _digest(parts[2])) or row is None or row.revoked_at:
        raise AuthError("invalid or revoked token", status=401)
    return _token(row)
