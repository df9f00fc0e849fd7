"""The embedded index's schema: numbered migrations (sqlite-utils), each run once, in one
transaction with its record in ``schema_migrations`` (``hub.catalog.sqlite`` runs them when it
opens an older file).

Tables: ``repos``, ``versions`` (one row per pushed version, the card as JSON plus the columns
searches filter on), ``files``, ``tasks``, ``tags``, ``metrics``, ``aliases``, ``lineage``
(the exact commits each version was built from), ``tokens``, ``uploads``, ``evals``,
``base_scores``, ``remote_evals``, ``settings`` and the FTS5 table ``versions_fts`` over repo name,
description and tasks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from hub.catalog.rows import lineage_rows, load_card, metric_rows

if TYPE_CHECKING:
    import sqlite_utils

    from hub.blobstore import BlobStore

INSERT_METRIC = (
    "INSERT INTO metrics (version_id, name, value, dataset, source, priority, position,"
    " higher_is_better) VALUES (?,?,?,?,?,?,?,?)"
)


INSERT_LINEAGE = "INSERT OR IGNORE INTO lineage (version_id, commit_id, kind) VALUES (?,?,?)"


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
        db.conn.executemany(INSERT_METRIC, metric_rows(version_id, card.get("metrics") or []))
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


def _migration_6(db: sqlite_utils.Database, store: BlobStore | None) -> None:
    # The parameter ledger (params_trained, params_changed_when_merged, ...) for versions
    # pushed before cards had it: recomputed from their stored files (hub/reledger.py).
    from hub.reledger import recompute_ledgers

    versions = [
        (version_id, commit, load_card(text))
        for version_id, commit, text in db.execute(
            "SELECT id, commit_id, card FROM versions ORDER BY id"
        ).fetchall()
    ]

    def files(version_id: int) -> list[tuple[str, str]]:
        rows = db.execute(
            "SELECT path, sha256 FROM files WHERE version_id = ? ORDER BY path", (version_id,)
        )
        return [(path, digest) for path, digest in rows.fetchall()]

    if not versions:
        return  # a new index: nothing to recompute, no store needed
    # Opened without its store (``open_catalog`` without ``store=``) only a new index can be.
    assert store is not None, "the ledger migration of an older index reads its blob store"
    for version_id, card in recompute_ledgers(versions, files, store):
        db.execute("UPDATE versions SET card = ? WHERE id = ?", (json.dumps(card), version_id))


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
            db.conn.executemany(INSERT_LINEAGE, rows)


def _migration_8(db: sqlite_utils.Database) -> None:
    # Values every server worker must read alike (the key signing Git LFS upload links),
    # inserted if absent by the first worker that needs one (hub/catalog/coordination.py).
    db.table("settings").create({"key": str, "value": str}, pk="key", not_null={"value"})


MIGRATIONS: list[Callable[..., None]] = [
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
    _migration_5,
    _migration_6,
    _migration_7,
    _migration_8,
]
"""Numbered from 1; append only. Each runs once, in one transaction with its record; those in
``WITH_STORE`` rewrite rows from the stored files and are given the blob store too."""

WITH_STORE = frozenset({_migration_6})
