"""The backend-neutral half of ``Catalog.commit``, shared by the SQL catalogs.

Each backend opens its transaction and locks (or creates) the repository row with its own SQL;
from there the steps are the same: read the head, let the caller build on it, and apply the
plan (update the head, or insert the next version and move the repository's counters). Only
the driver's parameter placeholder differs (``?`` for sqlite3, ``%s`` for psycopg)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from hub.catalog.base import Committed, Head, NewVersion, UpdateHead
from hub.catalog.rows import load_card


class PlanWriter(Protocol):
    """The catalog methods the plan is applied with (inside the open transaction)."""

    def _replace_annotations(self, conn: Any, version_id: int, card: dict[str, Any]) -> None: ...

    def _insert_records(self, conn: Any, version_id: int, records: Any) -> None: ...

    def _aliases(self, conn: Any, version_id: int) -> list[str]: ...

    def _insert_version(
        self, conn: Any, repo_id: int, card: dict[str, Any], parent: str | None
    ) -> int: ...


def apply_plan(
    catalog: PlanWriter,
    conn: Any,
    repo: str,
    locked: tuple[int, int, int],
    build: Callable[[Head], NewVersion | UpdateHead],
    placeholder: str,
) -> Committed:
    """Read the head of ``repo`` (its row ``locked`` = id, last version, version counter),
    call ``build`` on it and apply what it returns, all on ``conn``."""
    repo_id, last_version, counter = locked
    p = placeholder
    latest = conn.execute(
        f"SELECT id, commit_id, card FROM versions WHERE repo_id = {p} AND version = {p}",
        (repo_id, last_version),
    ).fetchone()
    head = Head(repo, counter + 1)
    if latest is not None:
        head = Head(repo, counter + 1, int(latest[0]), latest[1], load_card(latest[2]))
    plan = build(head)
    if isinstance(plan, UpdateHead):
        assert head.version_id is not None, "only a head can be updated"
        catalog._replace_annotations(conn, head.version_id, plan.card)
        catalog._insert_records(conn, head.version_id, plan.records)
        return Committed(head.version_id, plan.card, catalog._aliases(conn, head.version_id), False)
    version = plan.card["version"]
    assert version == head.next_version, "a new version takes head.next_version"
    version_id = catalog._insert_version(conn, repo_id, plan.card, plan.parent)
    catalog._insert_records(conn, version_id, plan.records)
    conn.execute(
        f"UPDATE repos SET last_version = {p}, version_counter = {p} WHERE id = {p}",
        (version, version, repo_id),
    )
    return Committed(version_id, plan.card, [], True)
