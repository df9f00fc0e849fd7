"""Where the registry lives: ``--home`` (the embedded SQLite index and blob folder) and the team
backends' ``--db`` (``HUB_DATABASE_URL``), read the same way by every command.

``--db`` is accepted before the command (``hub --db URL ls``) and after it on every command
that reads or writes the registry (``hub ls --db URL``, ``hub token create --db URL ...``,
``hub serve --db URL``, ``hub db upgrade --db URL``): one option, declared here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

DB_HELP = (
    "The team catalog, a PostgreSQL database: postgresql://USER[:PASSWORD]@HOST[:PORT]/DB"
    " (default: $HUB_DATABASE_URL; unset: the SQLite index in --home)."
)


def _remember_db(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    # Given after the command: it overrides the one before it (and the variable).
    if value:
        ctx.find_root().ensure_object(dict)["db"] = value


def db_option(command: F) -> F:
    """``--db URL`` on a command (the value lands where ``registry_of`` reads it)."""
    return click.option(
        "--db",
        metavar="URL",
        expose_value=False,
        callback=_remember_db,
        help=DB_HELP,
    )(command)


def root_db_option(group: F) -> F:
    """``--db URL`` / ``HUB_DATABASE_URL`` on the ``hub`` group itself (passed as ``db``)."""
    return click.option("--db", metavar="URL", envvar="HUB_DATABASE_URL", help=DB_HELP)(group)


def db_url(ctx: click.Context) -> str | None:
    """The ``--db`` in force (None: the embedded index in ``--home``)."""
    return (ctx.find_root().obj or {}).get("db") or None


def registry_of(ctx: click.Context) -> Any:
    """The registry the command line names: ``--home`` and ``--db``."""
    from hub.registry import Registry

    root = ctx.find_root().obj or {}
    return Registry(root.get("home"), db=db_url(ctx))
