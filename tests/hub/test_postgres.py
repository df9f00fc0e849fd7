"""The PostgreSQL catalog against a real server (tests/backends.py): schema upgrades run once
and only on demand, commits from many processes keep versions dense, faults are one clear
retryable error, and searches find what the SQLite index finds."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hub.catalog import NewVersion, open_catalog
from hub.search import SearchQuery
from schemas.errors import IndexUnavailable, InvalidArgument

ROOT = Path(__file__).resolve().parents[2]


def card(repo: str, version: int, parent: str | None, **fields) -> dict:
    """A card as the registry stores it, with the fields the catalog reads."""
    commit = hashlib.sha1(f"{repo} {version} {parent}".encode()).hexdigest()
    return {
        "repo": repo,
        "version": version,
        "commit": commit,
        "created_at": f"2026-01-01T00:00:{version:02d}",
        "method": "lora",
        "rank": 8,
        "params_trainable": 100,
        "size_bytes": 10,
        "files": [{"path": "adapter_model.safetensors", "sha256": "a" * 64, "size": 10}],
        "tasks": [],
        "tags": {},
        "metrics": [],
        "description": None,
        **fields,
    }


def push(catalog, repo: str, **fields) -> int:
    """Commit a new version of ``repo``; its number."""
    result = catalog.commit(
        repo,
        lambda head: NewVersion(card(repo, head.next_version, head.commit, **fields), head.commit),
    )
    return int(result.card["version"])


# -- schema ----------------------------------------------------------------------------------


def test_a_database_without_the_schema_is_refused_until_hub_db_upgrade(pg_empty_url, tmp_path):
    catalog = open_catalog(pg_empty_url, tmp_path)
    try:
        with pytest.raises(IndexUnavailable) as raised:
            catalog.repo("team/a")
        where = catalog.location
        assert str(raised.value) == (
            f"the database {where} has no hub schema yet: run `hub db upgrade --db URL` once"
            " (workers never migrate at start), then retry"
        )
        assert catalog.schema_version() == 0
        assert catalog.upgrade() == catalog.latest_schema() == 2
        assert catalog.upgrade() == 0
        assert catalog.repo("team/a") is None
        assert push(catalog, "team/a") == 1
    finally:
        catalog.close()


def test_location_names_user_host_and_database_never_the_password(postgres_server):
    from hub.catalog.postgres_db import location

    assert location("postgresql://hub:s3cret@db.internal:6543/registry") == (
        "postgresql://hub@db.internal:6543/registry"
    )
    assert location("postgresql://hub@/registry?host=/run/pg") == (
        "postgresql://hub@/registry?host=/run/pg"
    )


_UPGRADE = """
import json, sys, time
from pathlib import Path
from hub.catalog import open_catalog
catalog = open_catalog(sys.argv[1], Path("/nonexistent"))
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
print(json.dumps(catalog.upgrade()))
catalog.close()
"""


def _children(code: str, args: list[list[str]]) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return [
        subprocess.Popen(
            [sys.executable, "-c", code, *a],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for a in args
    ]


def _outputs(children: list[subprocess.Popen[str]]) -> list[str]:
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        outputs.append(out)
    return outputs


def test_two_processes_racing_hub_db_upgrade_apply_each_migration_once(pg_empty_url, tmp_path):
    import psycopg

    go = tmp_path / "go"
    children = _children(_UPGRADE, [[pg_empty_url, str(go)]] * 2)
    time.sleep(1.0)  # both connected and spinning on the start line
    go.touch()
    applied = sorted(json.loads(out) for out in _outputs(children))
    assert applied == [0, 2]
    with psycopg.connect(pg_empty_url) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert rows == [(1,), (2,)]


# -- concurrent commits ----------------------------------------------------------------------

_COMMITS = """
import json, sys, time
from pathlib import Path
from hub.catalog import NewVersion, open_catalog
from tests.hub.test_postgres import card
url, go, worker, count = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
catalog = open_catalog(url, Path("/nonexistent"))
catalog.repo("team/shared")  # connected before the start
while not go.exists():
    time.sleep(0.005)
mine = []
for n in range(count):
    tag = {"worker": worker, "n": str(n)}
    result = catalog.commit(
        "team/shared",
        lambda head: NewVersion(card("team/shared", head.next_version, head.commit, tags=tag),
                                head.commit),
    )
    mine.append(result.card["version"])
print(json.dumps(mine))
catalog.close()
"""


def test_commits_from_many_processes_give_dense_ordered_versions(pg_url, tmp_path):
    workers, each = 5, 4
    go = tmp_path / "go"
    children = _children(_COMMITS, [[pg_url, str(go), f"w{i}", str(each)] for i in range(workers)])
    time.sleep(1.5)
    go.touch()
    got = [json.loads(out) for out in _outputs(children)]
    assert all(mine == sorted(mine) and len(mine) == each for mine in got)
    assert sorted(v for mine in got for v in mine) == list(range(1, workers * each + 1))
    catalog = open_catalog(pg_url, tmp_path)
    try:
        stored = catalog.versions("team/shared")
        assert [s.card["version"] for s in stored] == list(range(1, workers * each + 1))
        # Each version builds on the one before it: no commit read a stale head.
        for before, after in itertools.pairwise(stored):
            assert (
                after.card["commit"]
                == card("team/shared", after.card["version"], before.card["commit"])["commit"]
            )
        assert {(s.card["tags"]["worker"], s.card["tags"]["n"]) for s in stored} == {
            (f"w{i}", str(n)) for i in range(workers) for n in range(each)
        }
        assert catalog.repo("team/shared").last_version == workers * each
    finally:
        catalog.close()


def test_a_build_that_raises_rolls_the_whole_commit_back(pg_url, tmp_path):
    catalog = open_catalog(pg_url, tmp_path)
    try:

        def refuse(head):
            assert head.next_version == 1 and head.commit is None
            raise InvalidArgument("expected head abc, found none")

        with pytest.raises(InvalidArgument, match="expected head abc"):
            catalog.commit("team/new", refuse)
        assert catalog.repo("team/new") is None  # the row made for the commit went too
    finally:
        catalog.close()


# -- faults ----------------------------------------------------------------------------------


def test_an_unreachable_server_is_one_retryable_error_without_the_password(tmp_path):
    with pytest.raises(IndexUnavailable) as raised:
        open_catalog("postgresql://hub:s3cret@127.0.0.1:1/hub", tmp_path)
    message = str(raised.value)
    assert message.startswith(
        "cannot reach the database postgresql://hub@127.0.0.1:1/hub: connection to server at"
        ' "127.0.0.1", port 1 failed: Connection refused'
    )
    assert message.endswith("check that the server is up and retry (nothing was changed)")
    assert "s3cret" not in message and "\n" not in message


def test_a_missing_database_names_itself_and_the_fix(postgres_server, tmp_path):
    url = postgres_server.url("no_such_db")
    with pytest.raises(IndexUnavailable) as raised:
        open_catalog(url, tmp_path)
    from hub.catalog.postgres_db import location

    assert str(raised.value).startswith(f"the database {location(url)} does not exist (")
    assert 'database "no_such_db" does not exist' in str(raised.value)
    assert str(raised.value).endswith("create it (createdb), then run `hub db upgrade --db URL`")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://hub:pw@host:notaport/db", "port 'notaport' is not a number"),
        ("postgresql://hub:pw@host/db?colour=blue", 'invalid URI query parameter: "colour"'),
    ],
)
def test_a_malformed_url_is_invalid_argument_before_any_connection(url, reason, tmp_path):
    with pytest.raises(InvalidArgument) as raised:
        open_catalog(url, tmp_path)
    shown = url.replace(":pw@", ":***@")
    assert str(raised.value) == (
        f"invalid --db {shown!r} (HUB_DATABASE_URL): {reason};"
        " give postgresql://USER@HOST[:PORT]/DB"
    )


def test_a_connection_killed_mid_commit_rolls_back_and_the_next_call_reconnects(
    pg_url, postgres_server, tmp_path
):
    catalog = open_catalog(pg_url, tmp_path)
    try:
        assert push(catalog, "team/a") == 1

        from psycopg.conninfo import conninfo_to_dict

        def killed(head):
            # The server ends this very session (as a restart or failover would).
            with postgres_server.admin() as admin:
                database = conninfo_to_dict(pg_url)["dbname"]
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (database,),
                )
            return NewVersion(card("team/a", head.next_version, head.commit), head.commit)

        with pytest.raises(IndexUnavailable) as raised:
            catalog.commit("team/a", killed)
        assert str(raised.value).startswith(f"cannot reach the database {catalog.location}: ")
        assert str(raised.value).endswith("retry (nothing was changed)")
        assert [s.card["version"] for s in catalog.versions("team/a")] == [1]
        assert push(catalog, "team/a") == 2
    finally:
        catalog.close()


# -- search parity with the SQLite index -----------------------------------------------------

_CORPUS = [
    ("team/sql-lora", {"tasks": ["sql"], "description": "Text to SQL on Spider", "rank": 16}),
    ("team/sql-lora", {"tasks": ["sql", "spider"], "description": "SQL, second try", "rank": 8}),
    ("team/notes", {"tasks": ["my_task"], "description": "Café crème brûlée recipes"}),
    ("team/chat_v2", {"tasks": ["chat"], "description": "A chat adapter; llama3.1 base",
                      "base_model": "meta-llama/Llama-3.1-8B", "method": "ia3", "rank": None}),
    ("lab/dora-x", {"tasks": ["sql"], "description": "DoRA for sql", "variant": "dora",
                    "base_model": "meta-llama/Llama-3-8B", "rank": 4,
                    "tags": {"owner": "lab", "stage": "prod"}}),
    ("lab/tiny", {"tasks": [], "description": None, "base_model": "Qwen/Qwen2-0.5B",
                  "rank": 64, "library": "adapters", "tags": {"owner": "lab"},
                  "details": {"reduction_factor": 16, "placement": ["after_ffn", "parallel"]},
                  "metrics": [{"name": "accuracy", "value": 0.7, "dataset": "boolq"}]}),
    ("lab/mixed", {"details": {"reduction_factor": {"0": 8, "1": 16}, "placement": "after_ffn"},
                   "inference_overhead": {"extra_layers": 4}, "rank": 32}),
    ("lab/Upper", {"tasks": ["sql"], "description": "upper case name",
                   "metrics": [{"name": "accuracy", "value": 0.9, "dataset": "boolq"},
                               {"name": "perplexity", "value": 3.0}]}),
]  # fmt: skip

_QUERIES = [
    SearchQuery(),
    SearchQuery(all_versions=True),
    SearchQuery(text="sql"),
    SearchQuery(text="SQ"),
    SearchQuery(text="sql spider", all_versions=True),
    SearchQuery(text="cafe"),
    SearchQuery(text="creme brul"),
    SearchQuery(text="my_task"),
    SearchQuery(text="my_ta"),
    SearchQuery(text="task"),
    SearchQuery(text="llama3"),
    SearchQuery(text="chat v2"),
    SearchQuery(text="team"),
    SearchQuery(text="nothing-here"),
    SearchQuery(base="meta-llama/*"),
    SearchQuery(base="meta-llama/Llama-3-8?"),
    SearchQuery(base="[mQ]*"),
    SearchQuery(base="[^m]*"),
    SearchQuery(base="meta-llama/llama*"),
    SearchQuery(method="dora"),
    SearchQuery(method="ia3"),
    SearchQuery(library="adapters"),
    SearchQuery(library="peft"),
    SearchQuery(rank="<=8"),
    SearchQuery(rank="9..64"),
    SearchQuery(tasks=["sql"]),
    SearchQuery(tags=["owner"]),
    SearchQuery(tags=["owner=lab", "stage=prod"]),
    SearchQuery(where=["metric:accuracy>=0.8"]),
    SearchQuery(where=["variant=dora"]),
    SearchQuery(where=["rank>=16"]),
    SearchQuery(where=["rank!=8"]),
    SearchQuery(where=["tasks=sql"]),
    SearchQuery(where=["tasks!=sql"]),
    SearchQuery(where=["reduction_factor>=16"]),
    SearchQuery(where=["reduction_factor=8"]),
    SearchQuery(where=["placement=after_ffn"]),
    SearchQuery(where=["details.placement!=parallel"]),
    SearchQuery(where=["inference_overhead.extra_layers>3", "rank<64"]),
    SearchQuery(where=["library=adapters", "metric:accuracy>=0.5"]),
    SearchQuery(where=["rank=eight"]),
    SearchQuery(sort="metric:accuracy"),
    SearchQuery(sort="-metric:accuracy@boolq"),
    SearchQuery(sort="metric:perplexity"),
    SearchQuery(sort="rank"),
    SearchQuery(sort="-rank", limit=3),
    SearchQuery(sort="name"),
    SearchQuery(sort="base"),
    SearchQuery(sort="created", all_versions=True),
    SearchQuery(first="method", sort="rank"),
    SearchQuery(namespaces=["lab"]),
    SearchQuery(namespaces=[]),
    SearchQuery(text="sql", namespaces=["team"], all_versions=True),
]


@pytest.fixture
def both(pg_url, tmp_path):
    """The same versions in a SQLite index and a PostgreSQL database."""
    from hub.store import BlobStore

    home = tmp_path / "home"
    catalogs = [
        open_catalog(None, home, store=BlobStore(home / "store")),
        open_catalog(pg_url, home),
    ]
    for catalog in catalogs:
        for repo, fields in _CORPUS:
            push(catalog, repo, **fields)
    yield catalogs
    for catalog in catalogs:
        catalog.close()


def _keys(catalog, rows) -> list[str]:
    return [f"{json.loads(r.card)['repo']}@v{json.loads(r.card)['version']}" for r in rows]


def test_every_search_finds_what_the_sqlite_index_finds(both):
    sqlite, postgres = both
    for query in _QUERIES:
        expected = _keys(sqlite, sqlite.search(query))
        assert _keys(postgres, postgres.search(query)) == expected, query
    # The queries above are not all empty, nor all the same.
    assert len({tuple(_keys(sqlite, sqlite.search(q))) for q in _QUERIES}) > 20


def test_pages_counts_facets_and_metric_names_match_the_sqlite_index(both):
    sqlite, postgres = both
    for query in [*_QUERIES[:6], SearchQuery(sort="metric:accuracy", all_versions=True)]:
        for offset in (0, 2):
            (a_rows, a_total), (b_rows, b_total) = (
                c.search_page(query, offset=offset, limit=3) for c in both
            )
            assert (_keys(postgres, b_rows), b_total) == (_keys(sqlite, a_rows), a_total)
        facets = ("base", "method", "rank", "task", "tag")
        assert postgres.facet_counts(query, top=5, only=facets) == sqlite.facet_counts(
            query, top=5, only=facets
        )
        assert postgres.most_common_metric(query) == sqlite.most_common_metric(query)
        assert postgres.metric_names(query, top=10) == sqlite.metric_names(query, top=10)
    assert sqlite.facet_counts(SearchQuery(), top=5, only=("task",)) == {
        "task": [("sql", 3), ("chat", 1), ("my_task", 1), ("spider", 1)]
    }


def test_a_query_without_words_is_refused_by_both(both):
    for catalog in both:
        with pytest.raises(InvalidArgument, match=r"invalid query '\.\.\.': no words to search"):
            catalog.search(SearchQuery(text="..."))
