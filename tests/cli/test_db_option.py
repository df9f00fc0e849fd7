"""``--db`` / ``HUB_DATABASE_URL`` on the command line, against a real PostgreSQL server."""

from __future__ import annotations

from click.testing import CliRunner

from cli.main import cli
from hub.catalog.postgres_db import location


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


def test_an_unreachable_database_is_one_error_line_without_the_password(hub_home):
    for args, env in [
        (["--db", "postgresql://hub:s3cret@127.0.0.1:1/hub", "ls"], None),
        (["ls", "--db", "postgresql://hub:s3cret@127.0.0.1:1/hub"], None),
        (["token", "ls"], {"HUB_DATABASE_URL": "postgresql://hub:s3cret@127.0.0.1:1/hub"}),
    ]:
        result = run(*args, env=env)
        assert result.exit_code == 1, result.output
        lines = result.output.splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            "Error: cannot reach the database postgresql://hub@127.0.0.1:1/hub: "
        ), result.output
        assert "s3cret" not in result.output


def test_hub_db_upgrade_then_every_command_uses_the_database(pg_empty_url, hub_home):
    where = location(pg_empty_url)
    refused = run("ls", "--db", pg_empty_url)
    assert refused.exit_code == 1
    assert refused.output == (
        f"Error: the database {where} has no hub schema yet: run `hub db upgrade --db URL`"
        " once (workers never migrate at start), then retry\n"
    )
    first = run("db", "upgrade", "--db", pg_empty_url)
    assert first.exit_code == 0, first.output
    assert first.output == f"Upgraded {where} to schema 2 (2 migration(s) applied)\n"
    again = run("db", "upgrade", env={"HUB_DATABASE_URL": pg_empty_url})
    assert again.output == f"{where} is up to date (schema 2)\n"
    created = run("token", "create", "--db", pg_empty_url, "--name", "ci", "--write", "team")
    assert created.exit_code == 0, created.output
    listed = run("--db", pg_empty_url, "token", "ls", "--json")
    assert '"name": "ci"' in listed.output
    # The token is in the database, not in the embedded index of --home.
    assert run("token", "ls", "--json").output.strip() == "[]"
