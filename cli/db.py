"""``hub db``: the team catalog's schema (``hub db upgrade``)."""

from __future__ import annotations

import click

from cli.backends import db_option, db_url, registry_of


@click.group()
def db() -> None:
    """Manage the catalog's schema.

    \b
    Example:
        hub db upgrade --db postgresql://hub@db.internal/hub
    """


@db.command()
@db_option
@click.pass_context
def upgrade(ctx: click.Context) -> None:
    """Create or upgrade the catalog's schema, once, before the workers start.

    `hub serve` workers never migrate on their own: run this after installing a new hub,
    from one host (several at once is safe: a lock makes the others wait, then find
    nothing to do). The embedded index in --home upgrades itself; this works on it too.

    \b
    Example:
        HUB_DATABASE_URL=postgresql://hub@db.internal/hub hub db upgrade
    """
    from pathlib import Path

    from hub.catalog import open_catalog

    url = db_url(ctx)
    registry = None if url else registry_of(ctx)
    catalog = registry.catalog if registry else open_catalog(url, Path.cwd())
    try:
        applied = catalog.upgrade()
        version = catalog.schema_version()
        where = catalog.location
    finally:
        (registry or catalog).close()
    if applied:
        click.echo(f"Upgraded {where} to schema {version} ({applied} migration(s) applied)")
    else:
        click.echo(f"{where} is up to date (schema {version})")
