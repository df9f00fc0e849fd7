"""Repository ids and references: ``namespace/name[@revision]``.

A revision is empty or ``main`` (the latest version), ``v3`` (a version number), an alias
(``prod``), or a commit id / unique hex prefix of at least 7 characters.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from schemas.errors import InvalidName

_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_VERSION = re.compile(r"v([1-9][0-9]{0,8})")
_HEX = re.compile(r"[0-9a-f]{7,40}")
# Aliases share the part grammar; they must not look like a version or a commit prefix.
_ALIAS = _PART

RevisionKind = Literal["latest", "version", "commit", "alias"]


def validate_part(part: str, what: str, full: str) -> str:
    """Check one ``namespace`` or ``name`` part; raise ``InvalidName`` naming it."""
    if not part:
        raise InvalidName(f"invalid repository id {full!r}: the {what} is empty", name=full)
    if ".." in part:
        raise InvalidName(f"invalid repository id {full!r}: the {what} contains '..'", name=full)
    if not _PART.fullmatch(part):
        raise InvalidName(
            f"invalid repository id {full!r}: the {what} {part!r} must start with a letter or"
            " digit and use only letters, digits, '.', '_' and '-' (at most 96 characters)",
            name=full,
        )
    return part


def validate_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it is a valid ``namespace/name``, else raise ``InvalidName``.

    Example:
        >>> validate_repo_id("team/sql-lora")
        'team/sql-lora'
    """
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise InvalidName(
            f"invalid repository id {repo_id!r}: expected 'namespace/name'", name=repo_id
        )
    namespace, name = repo_id.split("/")
    validate_part(namespace, "namespace", repo_id)
    validate_part(name, "name", repo_id)
    return repo_id


def validate_alias(alias: str) -> str:
    """An alias is one name part that cannot be mistaken for a version or a commit prefix."""
    if not _ALIAS.fullmatch(alias) or ".." in alias:
        raise InvalidName(
            f"invalid alias {alias!r}: use letters, digits, '.', '_' and '-',"
            " starting with a letter or digit",
            name=alias,
        )
    if alias == "main" or re.fullmatch(r"v[0-9]+", alias) or _HEX.fullmatch(alias):
        raise InvalidName(
            f"invalid alias {alias!r}: it would shadow 'main', a version (v3) or a commit id",
            name=alias,
        )
    return alias


class AdapterRef(BaseModel):
    """A parsed reference ``namespace/name[@revision]``.

    Example:
        >>> ref = AdapterRef.parse("team/sql-lora@v3")
        >>> (ref.repo, ref.revision_kind, ref.version)
        ('team/sql-lora', 'version', 3)
    """

    model_config = ConfigDict(frozen=True)

    namespace: str
    name: str
    revision: str | None = None

    @property
    def repo(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def revision_kind(self) -> RevisionKind:
        rev = self.revision
        if rev is None or rev == "main":
            return "latest"
        if _VERSION.fullmatch(rev):
            return "version"
        if _HEX.fullmatch(rev):
            return "commit"
        return "alias"

    @property
    def version(self) -> int | None:
        match = _VERSION.fullmatch(self.revision or "")
        return int(match.group(1)) if match else None

    @classmethod
    def parse(cls, text: str) -> AdapterRef:
        """Parse ``namespace/name[@rev]``; raise ``InvalidName`` with the reason."""
        if not isinstance(text, str):
            raise InvalidName(f"invalid reference {text!r}: expected a string", name=str(text))
        repo_id, sep, revision = text.partition("@")
        validate_repo_id(repo_id)
        if sep:
            if not revision:
                raise InvalidName(
                    f"invalid reference {text!r}: empty revision after '@'", name=text
                )
            if revision != "main" and not (
                _VERSION.fullmatch(revision) or _HEX.fullmatch(revision)
            ):
                try:
                    validate_alias(revision)
                except InvalidName:
                    raise InvalidName(
                        f"invalid reference {text!r}: revision {revision!r} is not 'main',"
                        " a version (v3), an alias or a commit id (7 to 40 hex)",
                        name=text,
                    ) from None
        namespace, name = repo_id.split("/")
        return cls(namespace=namespace, name=name, revision=revision if sep else None)

    def __str__(self) -> str:
        return self.repo if self.revision is None else f"{self.repo}@{self.revision}"
