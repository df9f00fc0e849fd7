"""The PostgreSQL catalog's schema: numbered migrations, applied once by ``hub db upgrade``.

The tables mean what the SQLite index's tables mean (``hub.catalog.sqlite_migrations``), row
for row; migration 1 is that schema as it stands at SQLite migration 7, so a change to one
backend's schema is a new migration here too. Differences, each for a reason:

- ``versions.search`` is the full-text index (a ``tsvector`` under a GIN index) in place of
  the FTS5 table; its words are cut in Python (``postgres_search.lexemes``) the way FTS5's
  ``unicode61`` tokenizer cuts them, so both backends find the same versions.
- ``versions.library`` is a column: the card text may hold ``NaN`` (not JSON), so it is never
  parsed by the database. For the same reason eval records keep their ``--forgetting`` blobs
  in columns of their own.
- Text compared or sorted uses the ``C`` collation: byte order, as SQLite's, whatever the
  server's locale.

Workers never migrate: ``upgrade`` holds a session advisory lock, so two operators (or a
deploy script on every host) running ``hub db upgrade`` at once apply each migration once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

ADVISORY_LOCK = 0x6875625F6462  # "hub_db": one number every hub process agrees on

_C = 'COLLATE "C"'

MIGRATIONS: list[str] = [
    # 1: repositories, versions, their files and annotations, aliases, lineage, tokens, eval
    # records, cached base scores, pending uploads, records of remote versions.
    f"""
    CREATE TABLE repos (
        id bigserial PRIMARY KEY,
        repo text {_C} NOT NULL UNIQUE,
        namespace text {_C} NOT NULL,
        name text {_C} NOT NULL,
        created_at text NOT NULL,
        -- the newest existing version (what "latest" means), and the highest number ever
        -- given: removed numbers are never reused
        last_version integer NOT NULL,
        version_counter integer NOT NULL
    );
    CREATE INDEX repos_namespace ON repos (namespace);
    CREATE TABLE versions (
        id bigserial PRIMARY KEY,
        repo_id bigint NOT NULL REFERENCES repos (id),
        version integer NOT NULL,
        commit_id text {_C} NOT NULL,
        parent_commit text,
        created_at text NOT NULL,
        base_model text {_C},
        method text {_C} NOT NULL,
        variant text {_C},
        rank integer,
        alpha double precision,
        task_type text,
        params_trainable bigint,
        size_bytes bigint,
        description text,
        library text {_C},
        card text NOT NULL,
        search tsvector NOT NULL,
        UNIQUE (repo_id, version),
        UNIQUE (repo_id, commit_id)
    );
    CREATE INDEX versions_commit ON versions (commit_id);
    CREATE INDEX versions_base_model ON versions (base_model);
    CREATE INDEX versions_method ON versions (method);
    CREATE INDEX versions_rank ON versions (rank);
    CREATE INDEX versions_search ON versions USING gin (search);
    CREATE TABLE files (
        version_id bigint NOT NULL REFERENCES versions (id),
        path text {_C} NOT NULL,
        sha256 text NOT NULL,
        size bigint NOT NULL,
        PRIMARY KEY (version_id, path)
    );
    CREATE INDEX files_sha256 ON files (sha256);
    CREATE TABLE tasks (
        version_id bigint NOT NULL REFERENCES versions (id),
        task text {_C} NOT NULL,
        PRIMARY KEY (version_id, task)
    );
    CREATE INDEX tasks_task ON tasks (task);
    CREATE TABLE tags (
        version_id bigint NOT NULL REFERENCES versions (id),
        key text {_C} NOT NULL,
        value text {_C},
        PRIMARY KEY (version_id, key)
    );
    CREATE INDEX tags_key_value ON tags (key, value);
    CREATE TABLE metrics (
        version_id bigint NOT NULL REFERENCES versions (id),
        name text {_C} NOT NULL,
        value double precision,
        dataset text {_C},
        source text,
        priority integer,
        position integer,
        higher_is_better integer
    );
    CREATE INDEX metrics_version_name ON metrics (version_id, name);
    CREATE INDEX metrics_name_dataset ON metrics (name, dataset);
    CREATE TABLE aliases (
        repo_id bigint NOT NULL REFERENCES repos (id),
        alias text {_C} NOT NULL,
        version_id bigint NOT NULL REFERENCES versions (id),
        PRIMARY KEY (repo_id, alias)
    );
    CREATE INDEX aliases_version ON aliases (version_id);
    CREATE TABLE lineage (
        version_id bigint NOT NULL REFERENCES versions (id),
        commit_id text NOT NULL,
        kind text NOT NULL,
        PRIMARY KEY (version_id, commit_id, kind)
    );
    CREATE INDEX lineage_commit ON lineage (commit_id);
    CREATE TABLE tokens (
        id text PRIMARY KEY,
        name text NOT NULL,
        hash text NOT NULL,
        read text NOT NULL,
        write text NOT NULL,
        created_at text NOT NULL,
        revoked_at text
    );
    CREATE TABLE evals (
        id text PRIMARY KEY,
        version_id bigint NOT NULL REFERENCES versions (id),
        created_at text NOT NULL,
        source text NOT NULL,
        dataset_sha256 text,
        results_sha256 text,
        forgetting_dataset_sha256 text,
        forgetting_results_sha256 text,
        record text NOT NULL
    );
    CREATE INDEX evals_version ON evals (version_id);
    CREATE TABLE base_scores (
        key text PRIMARY KEY,
        results_sha256 text NOT NULL,
        created_at text NOT NULL
    );
    CREATE TABLE uploads (
        token_id text NOT NULL,
        sha256 text NOT NULL,
        uploaded_at text NOT NULL,
        PRIMARY KEY (token_id, sha256)
    );
    CREATE INDEX uploads_uploaded_at ON uploads (uploaded_at);
    CREATE TABLE remote_evals (
        id text PRIMARY KEY,
        remote text NOT NULL,
        repo text NOT NULL,
        commit_id text NOT NULL,
        created_at text NOT NULL,
        dataset_sha256 text,
        results_sha256 text,
        forgetting_dataset_sha256 text,
        forgetting_results_sha256 text,
        record text NOT NULL
    );
    CREATE INDEX remote_evals_version ON remote_evals (remote, repo, commit_id);
    """,
    # 2: values every worker must read alike (SQLite migration 8).
    """
    CREATE TABLE settings (
        key text PRIMARY KEY,
        value text NOT NULL
    );
    """,
]
"""Numbered from 1; append only. Each runs once, in one transaction with its record."""

_RECORDS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    applied_at text NOT NULL
)
"""


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The number of migrations applied to the database of ``conn`` (0: none, or empty)."""
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    found = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return int(found[0] or 0) if found else 0


def upgrade(conn: psycopg.Connection[Any], migrations: list[str] | None = None) -> int:
    """Apply the migrations the database of ``conn`` (autocommit) lacks, under the advisory
    lock; return how many were applied. A second caller waits for the first, then finds
    nothing left to do."""
    from hub.catalog.rows import utcnow

    migrations = MIGRATIONS if migrations is None else migrations
    conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK,))
    try:
        with conn.transaction():
            conn.execute(_RECORDS)
        applied = 0
        # Read under the lock: another process may have migrated while this one waited.
        for number in range(schema_version(conn) + 1, len(migrations) + 1):
            with conn.transaction():
                conn.execute(migrations[number - 1])
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, %s)",
                    (number, utcnow()),
                )
            applied += 1
        return applied
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK,))
