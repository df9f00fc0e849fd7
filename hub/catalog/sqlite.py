"""The embedded catalog: one SQLite file (``home/index.db``, WAL mode) through sqlite3, the
schema in ``hub.catalog.sqlite_migrations``, searches in ``hub.catalog.sqlite_search``.

Writers use ``BEGIN IMMEDIATE`` so concurrent pushes from several processes serialize on the
database lock: version numbers come out dense and ordered and no push is lost. SQLite's
storage faults (unopenable file, full disk, I/O error, damaged file) surface as
``IndexUnavailable`` / ``IndexDamaged`` naming the file, from any call.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.catalog import snapshot, sqlite_migrations, sqlite_search
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
from hub.catalog.coordination import stored_setting
from hub.catalog.rows import lineage_rows, load_card, metric_rows, utcnow
from hub.catalog.snapshot import Snapshot
from hub.catalog.sqlite_access import SqliteAccess
from hub.catalog.sqlite_connection import BUSY_TIMEOUT_MS, Connection, storage_error
from hub.locks import file_lock
from schemas.errors import IndexDamaged

if TYPE_CHECKING:
    import sqlite_utils

    from hub.blobstore import BlobStore
    from hub.search import SearchQuery


def open_sqlite(path: Path, store: BlobStore | None) -> SqliteCatalog:
    """Open (or create) the index ``path`` of the registry whose blobs are in ``store``.

    Raises:
        IndexDamaged: ``path`` is missing or empty while ``store`` holds blobs (deleted or
            truncated: which versions the blobs belong to is unknown, so neither ``gc`` nor a
            push may go on as if the registry were new), or it is not a sound database.
        IndexUnavailable: it cannot be opened (permissions, full disk, I/O error).
    """
    if store is not None and (not path.exists() or path.stat().st_size == 0):
        blobs = sum(1 for _ in store.iter_digests())
        if blobs:
            raise IndexDamaged(
                f"the index {path} is {'empty' if path.exists() else 'missing'} but the store"
                f" {store.location} holds {blobs} blobs: which versions they belong to is lost."
                " Restore index.db from a backup (blobs are named by content, not by adapter,"
                " so the index cannot be rebuilt from them); to start an empty registry here"
                f" instead, move {store.location} aside first. Until then every command, gc"
                " included, refuses",
                path=str(path),
            )
    return SqliteCatalog(path, store)


class SqliteCatalog(SqliteAccess, Catalog):
    """A connection to the index file. Not shared across threads; cheap to open. Opening an
    older file upgrades it (``upgrade``) in one transaction per migration."""

    def __init__(self, path: Path, store: BlobStore | None = None) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.store = store
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
                factory=Connection,
            )
        except sqlite3.Error as error:
            raise storage_error(error, self.path) from error
        conn.index_path = self.path
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self.conn = conn
        self._db: sqlite_utils.Database | None = None
        self.upgrade()

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils over the same connection, for schema work (imported only when needed:
        it pulls in numpy, and read commands must start fast)."""
        if self._db is None:
            import sqlite_utils

            self._db = sqlite_utils.Database(self.conn)
        return self._db

    def close(self) -> None:
        self.conn.close()

    # -- schema -------------------------------------------------------------------------
    def schema_version(self) -> int:
        exists = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        if not exists:
            return 0
        row = self.conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def latest_schema(self) -> int:
        return len(sqlite_migrations.MIGRATIONS)

    def upgrade(self) -> int:
        # The module's list is read at each call, so a test can stand in an older schema.
        migrations = sqlite_migrations.MIGRATIONS
        if self.schema_version() == len(migrations):
            return 0
        if self.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self.conn.execute("PRAGMA journal_mode = WAL")
        applied = 0
        with self.write():
            if not self.db.table("schema_migrations").exists():
                self.db.table("schema_migrations").create(
                    {"version": int, "applied_at": str}, pk="version"
                )
            # Re-read inside the write lock: another process may have migrated meanwhile.
            for number in range(self.schema_version() + 1, len(migrations) + 1):
                migration = migrations[number - 1]
                if migration in sqlite_migrations.WITH_STORE:
                    migration(self.db, self.store)
                else:
                    migration(self.db)
                self.db.table("schema_migrations").insert(
                    {"version": number, "applied_at": utcnow()}
                )
                applied += 1
        return applied

    def integrity_check(self) -> str:
        return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from the start."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            # A failed rollback (the disk went away) must not hide the error that caused it;
            # SQLite rolls back a transaction its connection could not finish anyway.
            with contextlib.suppress(Exception):
                self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    # -- shared by the processes on this index (hub.catalog.coordination) ---------------
    def _hold_store_lock(self, *, shared: bool) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.path.parent / "locks" / "store.lock", shared=shared)

    def setting(self, key: str, default: str) -> str:
        with self.write() as conn:
            return stored_setting(conn, key, default, "?")

    # -- repositories and versions ------------------------------------------------------
    def repo(self, repo: str) -> RepoRow | None:
        row = self.conn.execute(
            "SELECT repo, namespace, name, created_at, last_version FROM repos WHERE repo = ?",
            (repo,),
        ).fetchone()
        return RepoRow(*row) if row else None

    def create_repo(self, repo: str, namespace: str, name: str) -> bool:
        with self.write() as conn:
            if conn.execute("SELECT 1 FROM repos WHERE repo = ?", (repo,)).fetchone():
                return False
            conn.execute(
                "INSERT INTO repos (repo, namespace, name, created_at, last_version,"
                " version_counter) VALUES (?,?,?,?,0,0)",
                (repo, namespace, name, utcnow()),
            )
        return True

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
                " WHERE r.repo = ? AND v.version = ?"
            )
            params: tuple[Any, ...] = (repo, number)
        elif alias is not None:
            sql = (
                "SELECT v.id, v.card FROM aliases a JOIN versions v ON v.id = a.version_id"
                " JOIN repos r ON r.id = a.repo_id WHERE r.repo = ? AND a.alias = ?"
            )
            params = (repo, alias)
        else:
            assert commit_prefix is not None, "give number, alias or commit_prefix"
            sql = (
                "SELECT v.id, v.card FROM versions v JOIN repos r ON r.id = v.repo_id"
                " WHERE r.repo = ? AND v.commit_id LIKE ?"
            )
            params = (repo, f"{commit_prefix}%")
        rows = self.conn.execute(sql, params).fetchall()
        return [StoredVersion(int(vid), load_card(text)) for vid, text in rows]

    def versions(self, repo: str) -> list[StoredVersion]:
        rows = self.conn.execute(
            "SELECT v.id, v.card FROM versions v JOIN repos r ON r.id = v.repo_id"
            " WHERE r.repo = ? ORDER BY v.version",
            (repo,),
        ).fetchall()
        return [StoredVersion(int(vid), load_card(text)) for vid, text in rows]

    def commit(self, repo: str, build: Callable[[Head], NewVersion | UpdateHead]) -> Committed:
        namespace, short = repo.split("/")
        with self.write() as conn:
            row = conn.execute(
                "SELECT id, last_version, version_counter FROM repos WHERE repo = ?", (repo,)
            ).fetchone()
            if row is None:
                cursor = conn.execute(
                    "INSERT INTO repos (repo, namespace, name, created_at, last_version,"
                    " version_counter) VALUES (?,?,?,?,0,0)",
                    (repo, namespace, short, utcnow()),
                )
                repo_id, last_version, counter = int(cursor.lastrowid or 0), 0, 0
            else:
                repo_id, last_version, counter = row
            return apply_plan(self, conn, repo, (repo_id, last_version, counter), build, "?")

    def _insert_version(
        self, conn: sqlite3.Connection, repo_id: int, card: dict[str, Any], parent: str | None
    ) -> int:
        cursor = conn.execute(
            "INSERT INTO versions (repo_id, version, commit_id, parent_commit, created_at,"
            " base_model, method, variant, rank, alpha, task_type, params_trainable,"
            " size_bytes, description, card) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                card.get("description"),
                json.dumps(card),
            ),
        )
        version_id = int(cursor.lastrowid or 0)
        conn.executemany(
            "INSERT INTO files (version_id, path, sha256, size) VALUES (?,?,?,?)",
            [(version_id, f["path"], f["sha256"], f["size"]) for f in card["files"]],
        )
        if rows := lineage_rows(version_id, card):
            conn.executemany(sqlite_migrations.INSERT_LINEAGE, rows)
        self._replace_annotations(conn, version_id, card)
        return version_id

    def _insert_records(
        self, conn: sqlite3.Connection, version_id: int, records: Sequence[dict[str, Any]]
    ) -> None:
        # Records imported at push: their metrics are on the card already, and one whose id
        # is there (the same files pushed again) is not stored twice.
        for record in records:
            conn.execute(
                "INSERT OR IGNORE INTO evals (id, version_id, created_at, source,"
                " dataset_sha256, results_sha256, record) VALUES (?,?,?,?,?,?,?)",
                (
                    record["id"],
                    version_id,
                    record["created_at"],
                    record["source"],
                    None,
                    None,
                    json.dumps(record, sort_keys=True),
                ),
            )

    def update_card(self, version_id: int, card: dict[str, Any]) -> None:
        with self.write() as conn:
            self._replace_annotations(conn, version_id, card)

    def _replace_annotations(
        self, conn: sqlite3.Connection, version_id: int, card: dict[str, Any]
    ) -> None:
        """(Re)write the searchable user annotations of a version: tasks, tags, metrics, FTS."""
        for table in ("tasks", "tags", "metrics"):
            conn.execute(f"DELETE FROM {table} WHERE version_id = ?", (version_id,))
        conn.executemany(
            "INSERT INTO tasks (version_id, task) VALUES (?, ?)",
            [(version_id, t) for t in card["tasks"]],
        )
        conn.executemany(
            "INSERT INTO tags (version_id, key, value) VALUES (?,?,?)",
            [(version_id, k, v) for k, v in card["tags"].items()],
        )
        conn.executemany(sqlite_migrations.INSERT_METRIC, metric_rows(version_id, card["metrics"]))
        conn.execute("DELETE FROM versions_fts WHERE rowid = ?", (version_id,))
        conn.execute(
            "INSERT INTO versions_fts (rowid, repo, description, tasks) VALUES (?,?,?,?)",
            (
                version_id,
                card["repo"].replace("/", " ").replace("-", " ").replace("_", " ")
                + " "
                + card["repo"],
                card.get("description") or "",
                " ".join(card["tasks"]),
            ),
        )
        conn.execute(
            "UPDATE versions SET card = ?, description = ? WHERE id = ?",
            (json.dumps(card), card.get("description"), version_id),
        )

    def remove_versions(self, repo: str, commits: Sequence[str]) -> bool:
        with self.write() as conn:
            found = conn.execute("SELECT id FROM repos WHERE repo = ?", (repo,)).fetchone()
            if found is None:
                return False
            repo_id = found[0]
            ids = []
            for commit in commits:
                row = conn.execute(
                    "SELECT id FROM versions WHERE repo_id = ? AND commit_id = ?",
                    (repo_id, commit),
                ).fetchone()
                if row is None:
                    return False
                ids.append(row[0])
            self._delete_versions(conn, ids)
            newest = conn.execute(
                "SELECT max(version) FROM versions WHERE repo_id = ?", (repo_id,)
            ).fetchone()[0]
            if newest is None:
                conn.execute("DELETE FROM aliases WHERE repo_id = ?", (repo_id,))
                conn.execute("DELETE FROM repos WHERE id = ?", (repo_id,))
            else:
                conn.execute("UPDATE repos SET last_version = ? WHERE id = ?", (newest, repo_id))
        return True

    def _delete_versions(self, conn: sqlite3.Connection, version_ids: list[int]) -> None:
        for version_id in version_ids:
            for table in ("files", "tasks", "tags", "metrics", "evals", "lineage"):
                conn.execute(f"DELETE FROM {table} WHERE version_id = ?", (version_id,))
            conn.execute("DELETE FROM aliases WHERE version_id = ?", (version_id,))
            conn.execute("DELETE FROM versions_fts WHERE rowid = ?", (version_id,))
            conn.execute("DELETE FROM versions WHERE id = ?", (version_id,))

    # -- aliases ------------------------------------------------------------------------
    def _aliases(self, conn: sqlite3.Connection, version_id: int) -> list[str]:
        rows = conn.execute(
            "SELECT alias FROM aliases WHERE version_id = ? ORDER BY alias", (version_id,)
        )
        return [row[0] for row in rows]

    def aliases(self, version_id: int) -> list[str]:
        return self._aliases(self.conn, version_id)

    def set_alias(self, version_id: int, alias: str) -> list[str] | None:
        with self.write() as conn:
            row = conn.execute(
                "SELECT repo_id FROM versions WHERE id = ?", (version_id,)
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "INSERT INTO aliases (repo_id, alias, version_id) VALUES (?,?,?)"
                " ON CONFLICT (repo_id, alias) DO UPDATE SET version_id = excluded.version_id",
                (row[0], alias, version_id),
            )
            return self._aliases(conn, version_id)

    # -- search -------------------------------------------------------------------------
    def search(self, query: SearchQuery) -> list[CardText]:
        return sqlite_search.search(self.conn, query)

    def search_page(
        self, query: SearchQuery, *, offset: int, limit: int
    ) -> tuple[list[CardText], int]:
        return sqlite_search.search_page(self.conn, query, offset, limit)

    def text_matches(self, query: SearchQuery) -> list[int]:
        return sqlite_search.text_matches(self.conn, query)

    def facet_counts(
        self, query: SearchQuery, *, top: int, only: Sequence[str]
    ) -> dict[str, list[tuple[Any, int]]]:
        return sqlite_search.facet_counts(self.conn, query, top, only)

    def metric_names(self, query: SearchQuery, *, top: int) -> list[str]:
        return sqlite_search.metric_names(self.conn, query, top)

    def most_common_metric(self, query: SearchQuery) -> str | None:
        return sqlite_search.most_common_metric(self.conn, query)

    def built_from(self, commit: str, namespaces: list[str] | None) -> list[dict[str, Any]]:
        return sqlite_search.built_from(self.conn, commit, namespaces)

    # -- eval records -------------------------------------------------------------------
    def add_eval(
        self, repo: str, commit: str, record: dict[str, Any], metrics: Sequence[dict[str, Any]]
    ) -> bool:
        return self.add_evals([(repo, commit, record, metrics)]) is None

    def add_evals(
        self, items: Sequence[tuple[str, str, dict[str, Any], Sequence[dict[str, Any]]]]
    ) -> str | None:
        def version(conn: sqlite3.Connection, repo: str, commit: str) -> Any:
            return conn.execute(
                "SELECT v.id, v.card FROM versions v JOIN repos r ON r.id = v.repo_id"
                " WHERE r.repo = ? AND v.commit_id = ?",
                (repo, commit),
            ).fetchone()

        with self.write() as conn:  # the write lock is held: no version goes in between
            for repo, commit, _, _ in items:
                if version(conn, repo, commit) is None:
                    return f"{repo}@{commit}"
            for repo, commit, record, metrics in items:
                self._add_eval(conn, version(conn, repo, commit), record, metrics)
        return None

    def _add_eval(
        self,
        conn: sqlite3.Connection,
        row: Any,
        record: dict[str, Any],
        metrics: Sequence[dict[str, Any]],
    ) -> None:
        version_id, stored = int(row[0]), load_card(row[1])
        conn.execute(
            "INSERT INTO evals (id, version_id, created_at, source, dataset_sha256,"
            " results_sha256, record) VALUES (?,?,?,?,?,?,?)",
            (
                record["id"],
                version_id,
                record["created_at"],
                record["source"],
                record["dataset"].get("sha256"),
                record.get("results_sha256"),
                json.dumps(record, sort_keys=True),
            ),
        )
        stored["metrics"].extend(metrics)
        self._replace_annotations(conn, version_id, stored)

    def eval_records(self, repo: str, commit: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT e.record FROM evals e JOIN versions v ON v.id = e.version_id"
            " JOIN repos r ON r.id = v.repo_id WHERE r.repo = ? AND v.commit_id = ?"
            " ORDER BY e.created_at, e.id",
            (repo, commit),
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def eval_record(self, eval_id: str) -> EvalRow | None:
        row = self.conn.execute(
            "SELECT r.repo, v.commit_id, e.record FROM evals e"
            " JOIN versions v ON v.id = e.version_id JOIN repos r ON r.id = v.repo_id"
            " WHERE e.id = ?",
            (eval_id,),
        ).fetchone()
        return EvalRow(row[0], row[1], json.loads(row[2])) if row else None

    def base_scores(self, key: str) -> str | None:
        row = self.conn.execute(
            "SELECT results_sha256 FROM base_scores WHERE key = ?", (key,)
        ).fetchone()
        return str(row[0]) if row else None

    def set_base_scores(self, key: str, digest: str) -> None:
        with self.write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO base_scores (key, results_sha256, created_at)"
                " VALUES (?,?,?)",
                (key, digest, utcnow()),
            )

    def add_remote_eval(self, remote: str, repo: str, commit: str, record: dict[str, Any]) -> None:
        with self.write() as conn:
            conn.execute(
                "INSERT INTO remote_evals (id, remote, repo, commit_id, created_at,"
                " dataset_sha256, results_sha256, record) VALUES (?,?,?,?,?,?,?,?)",
                (
                    record["id"],
                    remote,
                    repo,
                    commit,
                    record.get("created_at") or utcnow(),
                    record["dataset"]["sha256"],
                    record["results_sha256"],
                    json.dumps(record, sort_keys=True),
                ),
            )

    def remote_evals(self, remote: str, repo: str, commit: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT record FROM remote_evals WHERE remote = ? AND repo = ? AND commit_id = ?"
            " ORDER BY created_at, id",
            (remote, repo, commit),
        ).fetchall()
        return [json.loads(row[0]) for row in rows]

    # -- moving a registry (hub.catalog.snapshot) ---------------------------------------
    def row_counts(self) -> dict[str, int]:
        return snapshot.row_counts(self.conn)

    def export_snapshot(self) -> Snapshot:
        self.conn.execute("BEGIN")  # one read transaction: the rows of one moment
        try:
            return snapshot.read_snapshot(self.conn)
        finally:
            with contextlib.suppress(Exception):  # never hide the read's own error
                self.conn.execute("COMMIT")

    def import_snapshot(self, snap: Snapshot) -> None:
        with self.write() as conn:
            snapshot.write_snapshot(self, conn, snap, "?")

    @staticmethod
    def _eval_columns(record: dict[str, Any]) -> dict[str, Any]:
        return {}  # the --forgetting blobs are read from the record itself (json_extract)
