"""The SQLite index of every adapter version (sqlite-utils over one file, WAL mode).

Tables: ``repos``, ``versions`` (one row per pushed version, the card as JSON plus the columns
searches filter on), ``files``, ``tasks``, ``tags``, ``metrics``, ``aliases``, ``lineage``
(the exact commits each version was built from) and the FTS5 table
``versions_fts`` over repo name, description and tasks. Schema changes are numbered migrations
recorded in ``schema_migrations``; opening an older file upgrades it in one transaction.

Writers use ``BEGIN IMMEDIATE`` so concurrent pushes from several processes serialize on the
database lock: version numbers come out dense and ordered and no push is lost.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.errors import IndexDamaged, IndexUnavailable

if TYPE_CHECKING:
    import sqlite_utils

    from hub.store import BlobStore

BUSY_TIMEOUT_MS = 60_000


def _migration_1(db: sqlite_utils.Database) -> None:
    db.table("repos").create(
        # last_version: the newest existing version (what "latest" means);
        # version_counter: the highest number ever given, so removed numbers are never reused.
        {
            "id": int,
            "repo": str,
            "namespace": str,
            "name": str,
            "created_at": str,
            "last_version": int,
            "version_counter": int,
        },
        pk="id",
        not_null={"repo", "namespace", "name", "created_at", "last_version", "version_counter"},
    )
    db.table("repos").create_index(["repo"], unique=True)
    db.table("versions").create(
        {
            "id": int,
            "repo_id": int,
            "version": int,
            "commit_id": str,
            "parent_commit": str,
            "created_at": str,
            "base_model": str,
            "method": str,
            "variant": str,
            "rank": int,
            "alpha": float,
            "task_type": str,
            "params_trainable": int,
            "size_bytes": int,
            "description": str,
            "card": str,
        },
        pk="id",
        foreign_keys=[("repo_id", "repos", "id")],
        not_null={"repo_id", "version", "commit_id", "created_at", "method", "card"},
    )
    db.table("versions").create_index(["repo_id", "version"], unique=True)
    db.table("versions").create_index(["repo_id", "commit_id"], unique=True)
    db.table("versions").create_index(["commit_id"])
    db.table("versions").create_index(["base_model"])
    db.table("versions").create_index(["method"])
    db.table("versions").create_index(["rank"])
    db.table("files").create(
        {"version_id": int, "path": str, "sha256": str, "size": int},
        pk=("version_id", "path"),
        foreign_keys=[("version_id", "versions", "id")],
    )
    db.table("files").create_index(["sha256"])
    db.table("tasks").create(
        {"version_id": int, "task": str},
        pk=("version_id", "task"),
        foreign_keys=[("version_id", "versions", "id")],
    )
    db.table("tasks").create_index(["task"])
    db.table("tags").create(
        {"version_id": int, "key": str, "value": str},
        pk=("version_id", "key"),
        foreign_keys=[("version_id", "versions", "id")],
    )
    db.table("tags").create_index(["key", "value"])
    db.table("metrics").create(
        {"version_id": int, "name": str, "value": float, "dataset": str},
        foreign_keys=[("version_id", "versions", "id")],
    )
    db.table("metrics").create_index(["version_id", "name"])
    db.table("aliases").create(
        {"repo_id": int, "alias": str, "version_id": int},
        pk=("repo_id", "alias"),
        foreign_keys=[("repo_id", "repos", "id"), ("version_id", "versions", "id")],
    )
    db.execute(
        "CREATE VIRTUAL TABLE versions_fts USING fts5("
        "repo, description, tasks, tokenize='unicode61 remove_diacritics 2')"
    )


def _migration_2(db: sqlite_utils.Database) -> None:
    # Server access tokens: only a hash is kept; scopes are JSON lists of namespaces ("*": all).
    db.table("tokens").create(
        {
            "id": str,
            "name": str,
            "hash": str,
            "read": str,
            "write": str,
            "created_at": str,
            "revoked_at": str,
        },
        pk="id",
        not_null={"name", "hash", "read", "write", "created_at"},
    )


def _migration_3(db: sqlite_utils.Database) -> None:
    # Evaluation records (hub eval, hub metric add): the record as JSON, keyed to the version;
    # the blobs they reference (dataset, per-example results) count as referenced for gc.
    db.table("evals").create(
        {
            "id": str,
            "version_id": int,
            "created_at": str,
            "source": str,
            "dataset_sha256": str,
            "results_sha256": str,
            "record": str,
        },
        pk="id",
        foreign_keys=[("version_id", "versions", "id")],
        not_null={"version_id", "created_at", "source", "record"},
    )
    db.table("evals").create_index(["version_id"])
    # The base model's per-example scores, cached by base, data digest and scoring config.
    db.table("base_scores").create(
        {"key": str, "results_sha256": str, "created_at": str},
        pk="key",
        not_null={"results_sha256", "created_at"},
    )


def _migration_4(db: sqlite_utils.Database) -> None:
    # Pending uploads: blobs a server token sent that no version may reference yet. They keep
    # `gc` off those blobs for a grace period and let only their uploader use them
    # (hub/uploads.py states the rule). In the index, not in a worker's memory, so that every
    # worker (and `hub gc` in another process) sees the same records.
    db.table("uploads").create(
        {"token_id": str, "sha256": str, "uploaded_at": str},
        pk=("token_id", "sha256"),
        not_null={"uploaded_at"},
    )
    db.table("uploads").create_index(["uploaded_at"])


def _migration_5(db: sqlite_utils.Database) -> None:
    # One meaning for a metric (schemas/metrics.py): each metric row says its source, the
    # source's priority, its position in the card's list (later = newer) and its direction,
    # so `--sort metric:` and `--where metric:` pick in SQL what `card.metric()` picks.
    for column, kind in (("source", str), ("priority", int), ("position", int)):
        db.table("metrics").add_column(column, kind)
    db.table("metrics").add_column("higher_is_better", int)
    db.table("metrics").create_index(["name", "dataset"])
    rows = db.execute("SELECT id, card FROM versions").fetchall()
    for version_id, text in rows:
        card = load_card(text)
        db.execute("DELETE FROM metrics WHERE version_id = ?", (version_id,))
        db.conn.executemany(_INSERT_METRIC, metric_rows(version_id, card.get("metrics") or []))
    # Eval records made with `hub eval --from REMOTE` whose token could not write them back:
    # kept here, by the remote's URL and the version's repo and commit (blobs count for gc).
    db.table("remote_evals").create(
        {
            "id": str,
            "remote": str,
            "repo": str,
            "commit_id": str,
            "created_at": str,
            "dataset_sha256": str,
            "results_sha256": str,
            "record": str,
        },
        pk="id",
        not_null={"remote", "repo", "commit_id", "created_at", "record"},
    )
    db.table("remote_evals").create_index(["remote", "repo", "commit_id"])


_INSERT_METRIC = (
    "INSERT INTO metrics (version_id, name, value, dataset, source, priority, position,"
    " higher_is_better) VALUES (?,?,?,?,?,?,?,?)"
)


def metric_rows(version_id: int, metrics: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The ``metrics`` table's rows for a card's metric list (``schemas.metrics`` rule)."""
    from schemas.metrics import higher_is_better_of, source_priority

    return [
        (
            version_id,
            m["name"],
            m["value"],
            m.get("dataset"),
            m.get("source") or "push",
            source_priority(m.get("source")),
            position,
            int(higher_is_better_of(m)),
        )
        for position, m in enumerate(metrics)
    ]


def _migration_6(db: sqlite_utils.Database, store: BlobStore) -> None:
    # The parameter ledger (params_trained, params_changed_when_merged, ...) for versions
    # pushed before cards had it: recomputed from their stored files (hub/reledger.py).
    from hub.reledger import recompute_ledgers

    recompute_ledgers(db.conn, store)


def _migration_7(db: sqlite_utils.Database) -> None:
    # What each version was built from, by exact commit (composite inputs, the training
    # parent): "what was built from this version" is an index lookup, not a scan of every
    # card (the web page asks it for every adapter page). Filled for the versions already in.
    db.table("lineage").create(
        {"version_id": int, "commit_id": str, "kind": str},
        pk=("version_id", "commit_id", "kind"),
        foreign_keys=[("version_id", "versions", "id")],
    )
    db.table("lineage").create_index(["commit_id"])
    for version_id, text in db.execute("SELECT id, card FROM versions").fetchall():
        rows = lineage_rows(version_id, load_card(text))
        if rows:
            db.conn.executemany(_INSERT_LINEAGE, rows)


MIGRATIONS: list[Callable[..., None]] = [
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
    _migration_5,
    _migration_6,
    _migration_7,
]
"""Numbered from 1; append only. Each runs once, in one transaction with its record; those in
``_WITH_STORE`` rewrite rows from the stored files and are given the blob store too."""

_WITH_STORE = frozenset({_migration_6})


_INSERT_LINEAGE = "INSERT OR IGNORE INTO lineage (version_id, commit_id, kind) VALUES (?,?,?)"
_COMMIT = re.compile(r"[0-9a-f]{40}")


def lineage_rows(version_id: int, card: dict[str, Any]) -> list[tuple[int, str, str]]:
    """``(version_id, commit, kind)`` for each exact reference in the card's lineage: its
    composite ``input``s and its training ``parent`` (both ``ns/name@<40-hex commit>``)."""
    lineage = card.get("lineage") or {}
    refs = [(ref, "input") for ref in lineage.get("inputs") or []]
    refs += [(ref, "parent") for ref in {card.get("parent"), lineage.get("parent")} if ref]
    rows = []
    for ref, kind in refs:
        commit = str(ref).rpartition("@")[2]
        if _COMMIT.fullmatch(commit):
            rows.append((version_id, commit, kind))
    return rows


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def storage_error(error: sqlite3.Error, path: Path) -> Exception:
    """The typed, one-line error for a storage fault SQLite reported on the index ``path``;
    ``error`` itself for anything else (constraint violations, SQL mistakes are bugs)."""
    name = getattr(error, "sqlite_errorname", "") or ""
    folder = path.parent
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return IndexDamaged(
            f"the index {path} is damaged ({error}): it was truncated or overwritten. Restore"
            " it from a backup; the store's blobs are untouched",
            path=str(path),
        )
    if name.startswith("SQLITE_FULL"):
        return IndexUnavailable(
            f"cannot write the index {path}: the disk is full; free space on {folder} and retry"
            " (nothing was changed)",
            path=str(path),
        )
    if name.startswith("SQLITE_IOERR"):
        return IndexUnavailable(
            f"cannot read or write the index {path}: disk I/O error; the disk is probably full"
            f" or failing: check free space on {folder} and retry (nothing was changed)",
            path=str(path),
        )
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH")):
        return IndexUnavailable(
            f"cannot open the index {path} ({error}): {folder} must be writable by you, since"
            " SQLite keeps index.db-wal and index.db-shm beside it; fix its permissions or"
            " use another --home",
            path=str(path),
        )
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return IndexUnavailable(
            f"the index {path} stayed locked by another process for"
            f" {BUSY_TIMEOUT_MS // 1000} s; retry when it is done (nothing was changed)",
            path=str(path),
        )
    return error


class _Cursor(sqlite3.Cursor):
    """Every call that touches the file turns SQLite's storage faults into typed errors."""

    def _fail(self, error: sqlite3.Error) -> Exception:
        connection = self.connection
        assert isinstance(connection, _Connection)
        return storage_error(error, connection.index_path)

    def execute(self, *args: Any) -> _Cursor:
        try:
            return super().execute(*args)
        except sqlite3.Error as error:
            raise self._fail(error) from error

    def executemany(self, *args: Any) -> _Cursor:
        try:
            return super().executemany(*args)
        except sqlite3.Error as error:
            raise self._fail(error) from error

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except sqlite3.Error as error:
            raise self._fail(error) from error

    def fetchmany(self, *args: Any) -> list[Any]:
        try:
            return super().fetchmany(*args)
        except sqlite3.Error as error:
            raise self._fail(error) from error

    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        except sqlite3.Error as error:
            raise self._fail(error) from error

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except sqlite3.Error as error:
            raise self._fail(error) from error


class _Connection(sqlite3.Connection):
    index_path: Path

    def cursor(self, factory: Any = _Cursor) -> Any:
        return super().cursor(factory)

    def execute(self, *args: Any) -> _Cursor:
        return self.cursor().execute(*args)

    def executemany(self, *args: Any) -> _Cursor:
        return self.cursor().executemany(*args)

    def executescript(self, script: str) -> Any:
        try:
            return super().executescript(script)
        except sqlite3.Error as error:
            raise storage_error(error, self.index_path) from error


def load_card(text: str) -> dict[str, Any]:
    """A stored card's JSON, read so that a non-finite number written by an older version
    (``Infinity``, ``NaN``: not JSON) never reaches a reader: such a metric is dropped, any
    other such field becomes null."""
    card: dict[str, Any] = json.loads(text, parse_constant=_non_finite)
    if "Infinity" in text or "NaN" in text:
        card = _drop_non_finite(card)
    return card


class _NonFinite:
    pass


def _non_finite(_: str) -> _NonFinite:
    return _NonFinite()


def _drop_non_finite(value: Any) -> Any:
    if isinstance(value, dict):
        if "metrics" in value and isinstance(value["metrics"], list):
            value["metrics"] = [
                m
                for m in value["metrics"]
                if not (isinstance(m, dict) and isinstance(m.get("value"), _NonFinite))
            ]
        return {k: _drop_non_finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_drop_non_finite(v) for v in value]
    return None if isinstance(value, _NonFinite) else value


def card_json(text: str) -> str:
    """A stored card's JSON text as it may be printed: passed through unless it holds a
    non-finite number (see ``load_card``)."""
    if "Infinity" in text or "NaN" in text:
        return json.dumps(load_card(text))
    return text


def open_index(path: Path, store: BlobStore) -> Index:
    """Open (or create) the index ``path`` of the registry whose blobs are in ``store``.

    Raises:
        IndexDamaged: ``path`` is missing or empty while ``store`` holds blobs (deleted or
            truncated: which versions the blobs belong to is unknown, so neither ``gc`` nor a
            push may go on as if the registry were new), or it is not a sound database.
        IndexUnavailable: it cannot be opened (permissions, full disk, I/O error).
    """
    if not path.exists() or path.stat().st_size == 0:
        blobs = sum(1 for _ in store.iter_digests())
        if blobs:
            raise IndexDamaged(
                f"the index {path} is {'empty' if path.exists() else 'missing'} but the store"
                f" {store.root} holds {blobs} blobs: which versions they belong to is lost."
                " Restore index.db from a backup (blobs are named by content, not by adapter,"
                " so the index cannot be rebuilt from them); to start an empty registry here"
                f" instead, move {store.root} aside first. Until then every command, gc"
                " included, refuses",
                path=str(path),
            )
    return Index(path, store)


class Index:
    """A connection to the index file. Not shared across threads; cheap to open.

    SQLite's storage faults (unopenable file, full disk, I/O error, damaged file) surface as
    ``IndexUnavailable`` / ``IndexDamaged`` naming the file, from any call.
    """

    def __init__(self, path: Path, store: BlobStore | None = None) -> None:
        self.path = Path(path)
        self.store = store
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
                factory=_Connection,
            )
        except sqlite3.Error as error:
            raise storage_error(error, self.path) from error
        conn.index_path = self.path
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self.conn = conn
        self._db: sqlite_utils.Database | None = None
        self._migrate()

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

    def _migrate(self) -> None:
        if self.schema_version() == len(MIGRATIONS):
            return
        if self.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self.conn.execute("PRAGMA journal_mode = WAL")
        with self.write():
            if not self.db.table("schema_migrations").exists():
                self.db.table("schema_migrations").create(
                    {"version": int, "applied_at": str}, pk="version"
                )
            # Re-read inside the write lock: another process may have migrated meanwhile.
            for number in range(self.schema_version() + 1, len(MIGRATIONS) + 1):
                migration = MIGRATIONS[number - 1]
                if migration in _WITH_STORE:
                    assert self.store is not None, "open_index gives the index its store"
                    migration(self.db, self.store)
                else:
                    migration(self.db)
                self.db.table("schema_migrations").insert(
                    {"version": number, "applied_at": utcnow()}
                )

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

    # -- reads --------------------------------------------------------------------------
    def query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        cursor = self.conn.execute(sql, params)
        cursor.row_factory = sqlite3.Row
        return cursor.fetchall()

    def repo_row(self, repo: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM repos WHERE repo = ?", (repo,))
        return rows[0] if rows else None

    def aliases_by_version(self, version_ids: list[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for chunk_start in range(0, len(version_ids), 900):
            chunk = version_ids[chunk_start : chunk_start + 900]
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(
                f"SELECT version_id, alias FROM aliases WHERE version_id IN ({marks})"
                " ORDER BY alias",
                chunk,
            ):
                out.setdefault(row[0], []).append(row[1])
        return out

    # -- writes (call inside ``write()``) ------------------------------------------------
    def insert_version(
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
            conn.executemany(_INSERT_LINEAGE, rows)
        self.replace_annotations(conn, version_id, card)
        return version_id

    def replace_annotations(
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
        conn.executemany(_INSERT_METRIC, metric_rows(version_id, card["metrics"]))
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

    def delete_versions(self, conn: sqlite3.Connection, version_ids: list[int]) -> None:
        for version_id in version_ids:
            for table in ("files", "tasks", "tags", "metrics", "evals", "lineage"):
                conn.execute(f"DELETE FROM {table} WHERE version_id = ?", (version_id,))
            conn.execute("DELETE FROM aliases WHERE version_id = ?", (version_id,))
            conn.execute("DELETE FROM versions_fts WHERE rowid = ?", (version_id,))
            conn.execute("DELETE FROM versions WHERE id = ?", (version_id,))

    def referenced_digests(self) -> set[str]:
        """Every blob something in the index points at: version files, eval datasets and
        per-example results (of local versions and of remote ones kept here; a forgetting
        text and its results too), cached base scores."""
        return {
            row[0]
            for row in self.conn.execute(
                "SELECT sha256 FROM files UNION SELECT dataset_sha256 FROM evals"
                " UNION SELECT results_sha256 FROM evals UNION SELECT results_sha256"
                " FROM base_scores UNION SELECT dataset_sha256 FROM remote_evals"
                " UNION SELECT results_sha256 FROM remote_evals"
                # --forgetting: its text and per-document sums, kept in the record itself
                " UNION SELECT json_extract(record, '$.forgetting.dataset.sha256') FROM evals"
                " UNION SELECT json_extract(record, '$.forgetting.results_sha256') FROM evals"
                " UNION SELECT json_extract(record, '$.forgetting.dataset.sha256')"
                " FROM remote_evals"
                " UNION SELECT json_extract(record, '$.forgetting.results_sha256')"
                " FROM remote_evals"
            )
            if row[0] is not None
        }

    def versions_using(self, digests: set[str]) -> dict[str, list[str]]:
        """digest -> ['ns/name@v3', ...] for each given digest."""
        out: dict[str, list[str]] = {}
        for digest in digests:
            rows = self.conn.execute(
                "SELECT r.repo, v.version, f.path FROM files f"
                " JOIN versions v ON v.id = f.version_id JOIN repos r ON r.id = v.repo_id"
                " WHERE f.sha256 = ? ORDER BY r.repo, v.version",
                (digest,),
            )
            out[digest] = [f"{repo}@v{version} ({path})" for repo, version, path in rows]
        return out

    # -- pending uploads (see hub/uploads.py) --------------------------------------------
    def record_upload(self, token_id: str, digest: str) -> None:
        """Record (or refresh) that the token ``token_id`` sent the blob ``digest`` now."""
        with self.write() as conn:
            conn.execute(
                "INSERT INTO uploads (token_id, sha256, uploaded_at) VALUES (?,?,?)"
                " ON CONFLICT (token_id, sha256) DO UPDATE SET uploaded_at = excluded.uploaded_at",
                (token_id, digest, utcnow()),
            )

    def uploaded_by(self, token_id: str, digest: str, *, since: str) -> bool:
        """Whether ``token_id`` sent blob ``digest`` at or after ``since`` (ISO time)."""
        row = self.conn.execute(
            "SELECT 1 FROM uploads WHERE token_id = ? AND sha256 = ? AND uploaded_at >= ?",
            (token_id, digest, since),
        ).fetchone()
        return row is not None

    def expire_uploads(self, before: str) -> set[str]:
        """Drop upload records older than ``before``; return the digests still pending."""
        with self.write() as conn:
            conn.execute("DELETE FROM uploads WHERE uploaded_at < ?", (before,))
            return {row[0] for row in conn.execute("SELECT DISTINCT sha256 FROM uploads")}

    def pending_uploads(self, since: str) -> set[str]:
        """The digests uploaded at or after ``since`` (ISO time): kept by gc for their commit."""
        rows = self.conn.execute(
            "SELECT DISTINCT sha256 FROM uploads WHERE uploaded_at >= ?", (since,)
        )
        return {row[0] for row in rows}

    def integrity_check(self) -> str:
        return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])
