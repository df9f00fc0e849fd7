"""The team catalog: a PostgreSQL database through psycopg 3 and a connection pool, for many
``hub serve`` workers on many hosts at once.

``open_postgres(URL)`` connects once to check the server and the schema, then works through
the process's pool (``hub.catalog.postgres_db``). The schema is created and upgraded only by
``hub db upgrade`` (``upgrade``, under an advisory lock): a worker opening a database that is
empty or behind is refused with the command to run. Searches are in
``hub.catalog.postgres_search``, the migrations in ``hub.catalog.postgres_schema``.

Commits to one repository serialize on its row (``SELECT ... FOR UPDATE`` inside the
transaction, the row created first if missing): every commit reads the head another one left,
so version numbers are dense and ordered whichever worker or host commits; the unique
``(repo_id, version)`` key backs that up, and a transaction that loses a serialization race
or a deadlock is rolled back and run again (``Database.transaction``).

Example:
    >>> catalog = open_postgres("postgresql://hub@db.internal/hub")      # doctest: +SKIP
    >>> catalog.upgrade()                                                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from hub.catalog import postgres_schema, postgres_search, snapshot
from hub.catalog.base import (
    CardText,
    Catalog,
    Committed,
    EvalRow,
    Head,
    NewVersion,
    RepoRow,
    StoredVersion,
    UpdateHead,
)
from hub.catalog.commit_plan import apply_plan
from hub.catalog.coordination import advisory_store_lock, stored_setting
from hub.catalog.postgres_access import PostgresAccess
from hub.catalog.postgres_db import Database, connect_once, location
from hub.catalog.rows import forgetting_digests, lineage_rows, load_card, metric_rows, utcnow
from hub.catalog.snapshot import Snapshot
from schemas.errors import IndexUnavailable

if TYPE_CHECKING:
    from hub.search import SearchQuery


_INSERT_METRIC = (
    "INSERT INTO metrics (version_id, name, value, dataset, source, priority, position,"
    " higher_is_better) VALUES (%s,%s,%s,%s,%s,%s,%s,%s)"
)


def open_postgres(url: str) -> PostgresCatalog:
    """The catalog in the PostgreSQL database ``url`` (``postgresql://USER[:PASS]@HOST/DB``).

    The server is reached once here, so a wrong URL fails now with libpq's reason.

    Raises:
        InvalidArgument: ``url`` is not a connection string.
        IndexUnavailable: the server refuses or cannot be reached, the database is missing,
            or its schema is not this hub's (the message says to run ``hub db upgrade``).
    """
    where = location(url)
    with connect_once(url, where) as conn:
        found = postgres_schema.schema_version(conn)
    return PostgresCatalog(url, where, found)


def _text(value: Any) -> Any:
    # PostgreSQL text holds no NUL character; a README may (SQLite keeps it). Search text only:
    # the card itself is JSON, where json.dumps writes it as \\u0000.
    return value.replace("\x00", "") if isinstance(value, str) else value


def _version_row(version_id: int, card: dict[str, Any]) -> tuple[Any, ...]:
    return (
        json.dumps(card),
        _text(card.get("description")),
        _text(card.get("library")),
        postgres_search.lexemes(card["repo"], card.get("description"), card["tasks"]),
        version_id,
    )


class PostgresCatalog(PostgresAccess, Catalog):
    """The catalog in one PostgreSQL database. Cheap to open (the pool is the process's);
    one thread at a time, like every catalog."""

    def __init__(self, url: str, where: str, schema: int) -> None:
        self.location = where
        self._url = url
        self._found_schema = schema
        self._db = Database(url, where)

    def close(self) -> None:
        self._db.close()

    # -- schema -------------------------------------------------------------------------
    def _ready(self) -> Database:
        """The database, once its schema is known to be this hub's (checked at open, and
        again after a refusal: an operator may have upgraded since)."""
        if self._found_schema != self.latest_schema():
            self._found_schema = self.schema_version()
            latest = self.latest_schema()
            if self._found_schema < latest:
                state = (
                    "has no hub schema yet"
                    if self._found_schema == 0
                    else f"has schema {self._found_schema} of {latest}"
                )
                raise IndexUnavailable(
                    f"the database {self.location} {state}: run `hub db upgrade --db URL`"
                    " once (workers never migrate at start), then retry",
                    path=self.location,
                )
            if self._found_schema > latest:
                raise IndexUnavailable(
                    f"the database {self.location} has schema {self._found_schema}, newer than"
                    f" this hub's {latest}: upgrade the hub on this host",
                    path=self.location,
                )
        return self._db

    def schema_version(self) -> int:
        return self._db.read(postgres_schema.schema_version)

    def latest_schema(self) -> int:
        return len(postgres_schema.MIGRATIONS)

    def upgrade(self) -> int:
        # Its own connection, not a pooled one: the advisory lock is the session's.
        with connect_once(self._url, self.location) as conn:
            try:
                applied = postgres_schema.upgrade(conn)
            except Exception as error:
                from hub.catalog.postgres_db import storage_error

                mapped = storage_error(error, self.location)
                if mapped is error:
                    raise
                raise mapped from error
        self._found_schema = self.latest_schema()
        return applied

    def integrity_check(self) -> str:
        # PostgreSQL checks its pages itself (a damaged one fails the query that reads it,
        # as IndexDamaged); what is left to check is that every row the catalog reads parses.
        def check(conn: Any) -> str:
            bad = [
                f"version {repo}@v{version}: its card is not readable JSON"
                for repo, version, card in conn.execute(
                    "SELECT r.repo, v.version, v.card FROM versions v"
                    " JOIN repos r ON r.id = v.repo_id ORDER BY 1, 2"
                )
                if not _parses(card)
            ]
            return "; ".join(bad) or "ok"

        return self._ready().read(check)

    # -- shared by every worker on this database (hub.catalog.coordination) -------------
    def _hold_store_lock(self, *, shared: bool) -> contextlib.AbstractContextManager[None]:
        return advisory_store_lock(self._url, self.location, shared=shared)

    def setting(self, key: str, default: str) -> str:
        return self._ready().transaction(lambda conn: stored_setting(conn, key, default, "%s"))

    # -- repositories and versions ------------------------------------------------------
    def repo(self, repo: str) -> RepoRow | None:
        row = self._ready().read(
            lambda conn: conn.execute(
                "SELECT repo, namespace, name, created_at, last_version FROM repos WHERE repo = %s",
                (repo,),
            ).fetchone()
        )
        return RepoRow(*row) if row else None

    def create_repo(self, repo: str, namespace: str, name: str) -> bool:
        def create(conn: Any) -> bool:
            cursor = conn.execute(
                "INSERT INTO repos (repo, namespace, name, created_at, last_version,"
                " version_counter) VALUES (%s,%s,%s,%s,0,0) ON CONFLICT (repo) DO NOTHING",
                (repo, namespace, name, utcnow()),
            )
            return bool(cursor.rowcount)

        return self._ready().transaction(create)

    def find_versions(
        self,
        repo: str,
        *,
        number: int | None = None,
        alias: str | None = None,
        commit_prefix: str | None = None,
    ) -> list[StoredVersion]:
        if number is not None:
            sql = (
                "SELECT v.id, v.card FROM versions v JOIN repos r ON r.id = v.repo_id"
                " WHERE r.repo = %s AND v.version = %s"
            )
            params: tuple[Any, ...] = (repo, number)
        elif alias is not None:
            sql = (
                "SELECT v.id, v.card FROM aliases a JOIN versions v ON v.id = a.version_id"
                " JOIN repos r ON r.id = a.repo_id WHERE r.repo = %s AND a.alias = %s"
            )
            params = (repo, alias)
        else:
            assert commit_prefix is not None, "give number, alias or commit_prefix"
            # A prefix of hex digits (refs are checked before they get here): no LIKE escapes.
            sql = (
                "SELECT v.id, v.card FROM versions v JOIN repos r ON r.id = v.repo_id"
                " WHERE r.repo = %s AND v.commit_id LIKE %s ORDER BY v.version"
            )
            params = (repo, f"{commit_prefix.replace('%', '').replace('_', '')}%")
        rows = self._ready().read(lambda conn: conn.execute(sql, params).fetchall())
        return [StoredVersion(int(vid), load_card(text)) for vid, text in rows]

    def versions(self, repo: str) -> list[StoredVersion]:
        rows = self._ready().read(
            lambda conn: conn.execute(
                "SELECT v.id, v.card FROM versions v JOIN repos r ON r.id = v.repo_id"
                " WHERE r.repo = %s ORDER BY v.version",
                (repo,),
            ).fetchall()
        )
        return [StoredVersion(int(vid), load_card(text)) for vid, text in rows]

    def commit(self, repo: str, build: Callable[[Head], NewVersion | UpdateHead]) -> Committed:
        namespace, short = repo.split("/")

        def commit(conn: Any) -> Committed:
            # Created if missing (a concurrent creator wins without an error), then locked:
            # a second commit to this repository waits here until the first one is done.
            conn.execute(
                "INSERT INTO repos (repo, namespace, name, created_at, last_version,"
                " version_counter) VALUES (%s,%s,%s,%s,0,0) ON CONFLICT (repo) DO NOTHING",
                (repo, namespace, short, utcnow()),
            )
            repo_id, last_version, counter = conn.execute(
                "SELECT id, last_version, version_counter FROM repos WHERE repo = %s FOR UPDATE",
                (repo,),
            ).fetchone()
            return apply_plan(self, conn, repo, (repo_id, last_version, counter), build, "%s")

        return self._ready().transaction(commit)

    def _insert_version(
        self, conn: Any, repo_id: int, card: dict[str, Any], parent: str | None
    ) -> int:
        row = conn.execute(
            "INSERT INTO versions (repo_id, version, commit_id, parent_commit, created_at,"
            " base_model, method, variant, rank, alpha, task_type, params_trainable,"
            " size_bytes, card, search) VALUES"
            " (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,'{}','') RETURNING id",
            (
                repo_id,
                card["version"],
                card["commit"],
                parent,
                card["created_at"],
                card.get("base_model"),
                card["method"],
                card.get("variant"),
                card.get("rank"),
                card.get("alpha"),
                card.get("task_type"),
                card["params_trainable"],
                card["size_bytes"],
            ),
        ).fetchone()
        version_id = int(row[0])
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO files (version_id, path, sha256, size) VALUES (%s,%s,%s,%s)",
                [(version_id, f["path"], f["sha256"], f["size"]) for f in card["files"]],
            )
            if rows := lineage_rows(version_id, card):
                cursor.executemany(
                    "INSERT INTO lineage (version_id, commit_id, kind) VALUES (%s,%s,%s)"
                    " ON CONFLICT DO NOTHING",
                    rows,
                )
        self._replace_annotations(conn, version_id, card)
        return version_id

    def _insert_records(
        self, conn: Any, version_id: int, records: Sequence[dict[str, Any]]
    ) -> None:
        # Records imported at push: their metrics are on the card already, and one whose id
        # is there (the same files pushed again) is not stored twice.
        for record in records:
            self._insert_eval(conn, version_id, record, with_blobs=False, skip_existing=True)

    @staticmethod
    def _insert_eval(
        conn: Any,
        version_id: int,
        record: dict[str, Any],
        *,
        with_blobs: bool,
        skip_existing: bool = False,
    ) -> None:
        dataset, results = forgetting_digests(record)
        conn.execute(
            "INSERT INTO evals (id, version_id, created_at, source, dataset_sha256,"
            " results_sha256, forgetting_dataset_sha256, forgetting_results_sha256, record)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)"
            + (" ON CONFLICT (id) DO NOTHING" if skip_existing else ""),
            (
                record["id"],
                version_id,
                record["created_at"],
                record["source"],
                record["dataset"].get("sha256") if with_blobs else None,
                record.get("results_sha256") if with_blobs else None,
                dataset,
                results,
                json.dumps(record, sort_keys=True),
            ),
        )

    def update_card(self, version_id: int, card: dict[str, Any]) -> None:
        self._ready().transaction(lambda conn: self._replace_annotations(conn, version_id, card))

    def _replace_annotations(self, conn: Any, version_id: int, card: dict[str, Any]) -> None:
        """(Re)write the searchable user annotations of a version: tasks, tags, metrics, the
        text index, and the card itself."""
        with conn.cursor() as cursor:
            for table in ("tasks", "tags", "metrics"):
                cursor.execute(f"DELETE FROM {table} WHERE version_id = %s", (version_id,))
            cursor.executemany(
                "INSERT INTO tasks (version_id, task) VALUES (%s, %s)",
                [(version_id, t) for t in card["tasks"]],
            )
            cursor.executemany(
                "INSERT INTO tags (version_id, key, value) VALUES (%s,%s,%s)",
                [(version_id, k, v) for k, v in card["tags"].items()],
            )
            cursor.executemany(_INSERT_METRIC, metric_rows(version_id, card["metrics"]))
            cursor.execute(
                "UPDATE versions SET card = %s, description = %s, library = %s,"
                " search = %s::tsvector WHERE id = %s",
                _version_row(version_id, card),
            )

    def remove_versions(self, repo: str, commits: Sequence[str]) -> bool:
        def remove(conn: Any) -> bool:
            # The repository row locked first, as a commit locks it: a removal and a commit
            # of one repository never interleave.
            found = conn.execute(
                "SELECT id FROM repos WHERE repo = %s FOR UPDATE", (repo,)
            ).fetchone()
            if found is None:
                return False
            repo_id = found[0]
            ids = []
            for commit in commits:
                row = conn.execute(
                    "SELECT id FROM versions WHERE repo_id = %s AND commit_id = %s",
                    (repo_id, commit),
                ).fetchone()
                if row is None:
                    return False
                ids.append(row[0])
            for table in ("files", "tasks", "tags", "metrics", "evals", "lineage", "aliases"):
                conn.execute(f"DELETE FROM {table} WHERE version_id = ANY(%s)", (ids,))
            conn.execute("DELETE FROM versions WHERE id = ANY(%s)", (ids,))
            newest = conn.execute(
                "SELECT max(version) FROM versions WHERE repo_id = %s", (repo_id,)
            ).fetchone()[0]
            if newest is None:
                conn.execute("DELETE FROM aliases WHERE repo_id = %s", (repo_id,))
                conn.execute("DELETE FROM repos WHERE id = %s", (repo_id,))
            else:
                conn.execute("UPDATE repos SET last_version = %s WHERE id = %s", (newest, repo_id))
            return True

        return self._ready().transaction(remove)

    # -- aliases ------------------------------------------------------------------------
    @staticmethod
    def _aliases(conn: Any, version_id: int) -> list[str]:
        rows = conn.execute(
            "SELECT alias FROM aliases WHERE version_id = %s ORDER BY alias", (version_id,)
        )
        return [row[0] for row in rows]

    def aliases(self, version_id: int) -> list[str]:
        return self._ready().read(lambda conn: self._aliases(conn, version_id))

    def set_alias(self, version_id: int, alias: str) -> list[str] | None:
        def tag(conn: Any) -> list[str] | None:
            row = conn.execute(
                "SELECT repo_id FROM versions WHERE id = %s FOR SHARE", (version_id,)
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "INSERT INTO aliases (repo_id, alias, version_id) VALUES (%s,%s,%s)"
                " ON CONFLICT (repo_id, alias) DO UPDATE SET version_id = excluded.version_id",
                (row[0], alias, version_id),
            )
            return self._aliases(conn, version_id)

        return self._ready().transaction(tag)

    # -- search -------------------------------------------------------------------------
    def search(self, query: SearchQuery) -> list[CardText]:
        return self._ready().read(lambda conn: postgres_search.search(conn, query))

    def search_page(
        self, query: SearchQuery, *, offset: int, limit: int
    ) -> tuple[list[CardText], int]:
        return self._ready().read(
            lambda conn: postgres_search.search_page(conn, query, offset, limit)
        )

    def text_matches(self, query: SearchQuery) -> list[int]:
        return self._ready().read(lambda conn: postgres_search.text_matches(conn, query))

    def facet_counts(
        self, query: SearchQuery, *, top: int, only: Sequence[str]
    ) -> dict[str, list[tuple[Any, int]]]:
        return self._ready().read(lambda conn: postgres_search.facet_counts(conn, query, top, only))

    def metric_names(self, query: SearchQuery, *, top: int) -> list[str]:
        return self._ready().read(lambda conn: postgres_search.metric_names(conn, query, top))

    def most_common_metric(self, query: SearchQuery) -> str | None:
        return self._ready().read(lambda conn: postgres_search.most_common_metric(conn, query))

    def built_from(self, commit: str, namespaces: list[str] | None) -> list[dict[str, Any]]:
        return self._ready().read(lambda conn: postgres_search.built_from(conn, commit, namespaces))

    # -- eval records -------------------------------------------------------------------
    def add_eval(
        self, repo: str, commit: str, record: dict[str, Any], metrics: Sequence[dict[str, Any]]
    ) -> bool:
        return self.add_evals([(repo, commit, record, metrics)]) is None

    def add_evals(
        self, items: Sequence[tuple[str, str, dict[str, Any], Sequence[dict[str, Any]]]]
    ) -> str | None:
        def version(conn: Any, repo: str, commit: str) -> Any:
            # The version's row locked: two records added at once both land on the card.
            return conn.execute(
                "SELECT v.id, v.card FROM versions v JOIN repos r ON r.id = v.repo_id"
                " WHERE r.repo = %s AND v.commit_id = %s FOR UPDATE OF v",
                (repo, commit),
            ).fetchone()

        def add(conn: Any) -> str | None:
            for repo, commit, _, _ in items:  # locked from here to the commit
                if version(conn, repo, commit) is None:
                    return f"{repo}@{commit}"
            for repo, commit, record, metrics in items:
                row = version(conn, repo, commit)  # the card as the items before left it
                version_id, stored = int(row[0]), load_card(row[1])
                self._insert_eval(conn, version_id, record, with_blobs=True)
                stored["metrics"].extend(metrics)
                self._replace_annotations(conn, version_id, stored)
            return None

        return self._ready().transaction(add)

    def eval_records(self, repo: str, commit: str) -> list[dict[str, Any]]:
        rows = self._ready().read(
            lambda conn: conn.execute(
                "SELECT e.record FROM evals e JOIN versions v ON v.id = e.version_id"
                " JOIN repos r ON r.id = v.repo_id WHERE r.repo = %s AND v.commit_id = %s"
                " ORDER BY e.created_at, e.id",
                (repo, commit),
            ).fetchall()
        )
        return [json.loads(r[0]) for r in rows]

    def eval_record(self, eval_id: str) -> EvalRow | None:
        row = self._ready().read(
            lambda conn: conn.execute(
                "SELECT r.repo, v.commit_id, e.record FROM evals e"
                " JOIN versions v ON v.id = e.version_id JOIN repos r ON r.id = v.repo_id"
                " WHERE e.id = %s",
                (eval_id,),
            ).fetchone()
        )
        return EvalRow(row[0], row[1], json.loads(row[2])) if row else None

    def base_scores(self, key: str) -> str | None:
        row = self._ready().read(
            lambda conn: conn.execute(
                "SELECT results_sha256 FROM base_scores WHERE key = %s", (key,)
            ).fetchone()
        )
        return str(row[0]) if row else None

    def set_base_scores(self, key: str, digest: str) -> None:
        self._ready().transaction(
            lambda conn: conn.execute(
                "INSERT INTO base_scores (key, results_sha256, created_at) VALUES (%s,%s,%s)"
                " ON CONFLICT (key) DO UPDATE SET results_sha256 = excluded.results_sha256,"
                " created_at = excluded.created_at",
                (key, digest, utcnow()),
            )
        )

    def add_remote_eval(self, remote: str, repo: str, commit: str, record: dict[str, Any]) -> None:
        dataset, results = forgetting_digests(record)
        self._ready().transaction(
            lambda conn: conn.execute(
                "INSERT INTO remote_evals (id, remote, repo, commit_id, created_at,"
                " dataset_sha256, results_sha256, forgetting_dataset_sha256,"
                " forgetting_results_sha256, record) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                (
                    record["id"],
                    remote,
                    repo,
                    commit,
                    record.get("created_at") or utcnow(),
                    record["dataset"]["sha256"],
                    record["results_sha256"],
                    dataset,
                    results,
                    json.dumps(record, sort_keys=True),
                ),
            )
        )

    def remote_evals(self, remote: str, repo: str, commit: str) -> list[dict[str, Any]]:
        rows = self._ready().read(
            lambda conn: conn.execute(
                "SELECT record FROM remote_evals WHERE remote = %s AND repo = %s"
                " AND commit_id = %s ORDER BY created_at, id",
                (remote, repo, commit),
            ).fetchall()
        )
        return [json.loads(row[0]) for row in rows]

    # -- moving a registry (hub.catalog.snapshot) ---------------------------------------
    def row_counts(self) -> dict[str, int]:
        def count(conn: Any) -> dict[str, int]:
            if postgres_schema.schema_version(conn) == 0:
                return dict.fromkeys(snapshot.COUNTED, 0)  # no schema yet: nothing in it
            return snapshot.row_counts(conn)

        return self._db.read(count)

    def export_snapshot(self) -> Snapshot:
        def read(conn: Any) -> Snapshot:
            # One snapshot for every statement (READ COMMITTED would take one per statement).
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return snapshot.read_snapshot(conn)

        return self._ready().read(read)

    def import_snapshot(self, snap: Snapshot) -> None:
        self._ready().transaction(lambda conn: snapshot.write_snapshot(self, conn, snap, "%s"))

    @staticmethod
    def _eval_columns(record: dict[str, Any]) -> dict[str, Any]:
        dataset, results = forgetting_digests(record)
        return {"forgetting_dataset_sha256": dataset, "forgetting_results_sha256": results}


def _parses(text: str) -> bool:
    try:
        load_card(text)
    except ValueError:
        return False
    return True
