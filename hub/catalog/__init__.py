"""The catalog seam: every SQL statement of the registry lives behind ``Catalog``
(``hub.catalog.base``), one module per backend.

``open_catalog(None, home)`` is the embedded default, the SQLite file ``home/index.db``
(``hub.catalog.sqlite``); a ``postgresql://`` URL is a team database
(``hub.catalog.postgres``, which provides ``open_postgres(url) -> Catalog``).

Example:
    >>> catalog = open_catalog(None, Path("/tmp/hub-home"))              # doctest: +SKIP
    >>> catalog.repo("team/sql-lora")                                    # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hub.catalog.base import (
    CardText,
    Catalog,
    Committed,
    EvalRow,
    Head,
    NewVersion,
    RepoRow,
    StoredVersion,
    TokenRow,
    UpdateHead,
)
from schemas.errors import InvalidArgument

__all__ = [
    "CardText",
    "Catalog",
    "Committed",
    "EvalRow",
    "Head",
    "NewVersion",
    "RepoRow",
    "StoredVersion",
    "TokenRow",
    "UpdateHead",
    "open_catalog",
]

POSTGRES_SCHEMES = ("postgresql", "postgres")


def open_catalog(url: str | None, home: Path, *, store: Any = None) -> Catalog:
    """The catalog ``url`` names; None: the embedded SQLite index ``home/index.db``.

    Args:
        url: ``--db`` / ``HUB_DATABASE_URL``: None (or empty) for the embedded default, or
            ``postgresql://USER@HOST/DB``.
        home: the registry folder (``--home``): where the embedded index lives.
        store: the registry's blob store; the embedded index checks against it that a missing
            ``index.db`` is not a lost one, and its ledger migration reads stored files.

    Raises:
        InvalidArgument: an unknown URL scheme (the message names ``--db``).
        IndexDamaged, IndexUnavailable: the database cannot be opened or is damaged.
    """
    if not url:
        from hub.catalog.sqlite import open_sqlite

        return open_sqlite(Path(home) / "index.db", store)
    scheme = urlsplit(url).scheme.lower()
    if scheme in POSTGRES_SCHEMES:
        try:
            from hub.catalog.postgres import open_postgres  # type: ignore[import-not-found,unused-ignore]
        except ImportError as error:
            raise InvalidArgument(
                f"invalid --db {_redacted(url)}: the PostgreSQL catalog is not available"
                f" ({error}); install the hub's postgres extra or leave --db unset"
            ) from None
        catalog: Catalog = open_postgres(url)
        return catalog
    raise InvalidArgument(
        f"invalid --db {_redacted(url)} (HUB_DATABASE_URL): unknown scheme {scheme + '://'!r};"
        " give postgresql://USER@HOST/DB, or leave it unset for the embedded index in --home"
    )


def _redacted(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return repr(url)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return repr(parts._replace(netloc=netloc).geturl())
