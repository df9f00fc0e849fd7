"""``hub migrate --to TARGET``: move the registry into an empty one elsewhere (``hub.migrate``)."""

from __future__ import annotations

import click

from cli.backends import db_option, registry_of
from cli.output import human_size, json_option, print_json


@click.command()
@db_option
@click.option(
    "--to",
    "to",
    required=True,
    metavar="TARGET",
    help="DB_URL,STORE_URL (postgresql://USER@HOST/DB,s3://BUCKET/PREFIX or"
    " ...,file:///DIR) for a team hub, or a FOLDER for an embedded registry. It must be empty.",
)
@json_option
@click.pass_context
def migrate(ctx: click.Context, to: str, as_json: bool) -> None:
    """Copy this registry (--home, or --db and --store) into an empty one: every repository
    and version with the same commit ids and numbers, aliases, tokens (they keep working),
    eval records and every blob they reference. The source is only read.

    Everything is checked first (a damaged source, a non-empty or unreachable target:
    nothing is written). A team database without the hub's schema gets it (as `hub db
    upgrade` would). Blobs are copied first, each re-hashed on the way (ones already in the
    target store are not copied again), then the catalog in one transaction: a failure
    leaves the target's catalog empty, and the same command run again resumes. Stop the
    source's `hub serve` workers first: pushes made meanwhile are not moved.

    \b
    Example:
        hub migrate --to postgresql://hub@db.internal/hub,s3://team-hub/blobs
        hub migrate --db postgresql://hub@db.internal/hub --store s3://team-hub/blobs \\
            --to ~/hub-backup
    """
    from hub.migrate import migrate as run_migrate

    with registry_of(ctx) as registry:
        report = run_migrate(registry, to)
    if as_json:
        print_json(vars(report))
        return
    extra = "".join(
        f", {n} {what}"
        for n, what in (
            (report.remote_evals, "remote eval records"),
            (report.base_scores, "cached base scores"),
        )
        if n
    )
    schema = (
        f"; created the schema ({report.schema_migrations} migrations)"
        if report.schema_migrations
        else ""
    )
    click.echo(
        f"Migrated {report.source} to {report.target}: {report.repos} repos,"
        f" {report.versions} versions, {report.aliases} aliases, {report.tokens} tokens,"
        f" {report.evals} eval records{extra}, {report.blobs} blobs"
        f" ({human_size(report.bytes)}; {report.blobs_copied} copied,"
        f" {report.blobs - report.blobs_copied} already there){schema}"
    )
