"""Where the registry lives: ``--home`` (the embedded SQLite index and blob folder), the team
backends' ``--db`` (``HUB_DATABASE_URL``) and ``--store`` (``HUB_STORE_URL``), read the same
way by every command.

Both are accepted before the command (``hub --db URL --store URL ls``) and after it on every
command that reads or writes the registry (``hub ls --db URL``, ``hub gc --store URL``,
``hub serve --db URL --store URL``, ``hub db upgrade --db URL``): one declaration each, here.
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
STORE_HELP = (
    "Where blobs live: s3://BUCKET[/PREFIX] (AWS settings from the environment;"
    " AWS_ENDPOINT_URL_S3 for a non-AWS store) or file:///DIR (default: $HUB_STORE_URL;"
    " unset: the folder store/ in --home)."
)


def _remember(key: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        # Given after the command: it overrides the one before it (and the variable).
        if value:
            ctx.find_root().ensure_object(dict)[key] = value

    return callback


def db_option(command: F) -> F:
    """``--db URL`` and ``--store URL`` on a command (the values land where ``registry_of``
    reads them)."""
    command = click.option(
        "--store",
        metavar="URL",
        expose_value=False,
        callback=_remember("store"),
        help=STORE_HELP,
    )(command)
    return click.option(
        "--db",
        metavar="URL",
        expose_value=False,
        callback=_remember("db"),
        help=DB_HELP,
    )(command)


def root_db_option(group: F) -> F:
    """``--db URL`` / ``HUB_DATABASE_URL`` and ``--store URL`` / ``HUB_STORE_URL`` on the
    ``hub`` group itself (passed as ``db`` and ``store``)."""
    group = click.option("--store", metavar="URL", envvar="HUB_STORE_URL", help=STORE_HELP)(group)
    return click.option("--db", metavar="URL", envvar="HUB_DATABASE_URL", help=DB_HELP)(group)


def db_url(ctx: click.Context) -> str | None:
    """The ``--db`` in force (None: the embedded index in ``--home``)."""
    return (ctx.find_root().obj or {}).get("db") or None


def store_url(ctx: click.Context) -> str | None:
    """The ``--store`` in force (None: the folder ``store/`` in ``--home``)."""
    return (ctx.find_root().obj or {}).get("store") or None


def registry_of(ctx: click.Context) -> Any:
    """The registry the command line names: ``--home``, ``--db`` and ``--store``."""
    from hub.registry import Registry

    root = ctx.find_root().obj or {}
    return Registry(root.get("home"), db=db_url(ctx), store=store_url(ctx))
