"""The Registry API on both deployments: a real SQLite file and blob folder, then a real
PostgreSQL database and S3 bucket."""

from __future__ import annotations

import shutil

import pytest

from hub import Registry
from hub.catalog.sqlite_migrations import MIGRATIONS
from schemas import (
    AdapterNotFound,
    InvalidAdapter,
    InvalidArgument,
    InvalidName,
    Metric,
    OutputExists,
    RevisionNotFound,
)
from tests.hub.server.live import overwrite_blob


def _variant(src, dst, text):
    """A copy of adapter ``src`` whose README differs: new content, hence a new version."""
    shutil.copytree(src, dst)
    (dst / "README.md").write_text(text)
    return dst


pytestmark = pytest.mark.usefixtures("deployment")


def test_push_records_card_and_dedups(registry, adapters):
    lora = adapters("lora")
    result = registry.push(
        lora,
        name="team/sql",
        tasks=["sql", "sql"],
        tags=["team=nlp"],
        metrics=["exact_match=0.7@spider"],
    )
    card = result.card
    assert result.created
    assert (card.repo, card.version, card.method, card.rank) == ("team/sql", 1, "lora", 8)
    assert card.tasks == ["sql"]
    assert card.tags == {"team": "nlp"}
    assert card.metrics == [Metric(name="exact_match", value=0.7, dataset="spider")]
    assert len(card.commit) == 40
    assert {f.path for f in card.files} == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
    }
    blobs_before = sorted(registry.store.iter_digests())

    again = registry.push(lora, name="team/sql", tasks=["text2sql"])
    assert not again.created
    assert again.card.version == 1 and again.card.commit == card.commit
    assert again.card.tasks == ["sql", "text2sql"]
    assert sorted(registry.store.iter_digests()) == blobs_before

    other = registry.push(lora, name="team/sql-copy")
    assert other.created and other.card.version == 1
    assert sorted(registry.store.iter_digests()) == blobs_before  # same bytes, nothing new


def test_versions_and_every_revision_kind(registry, adapters, tmp_path):
    lora = adapters("lora")
    v1 = registry.push(lora, name="a/b").card
    v2 = registry.push(_variant(lora, tmp_path / "v2", "second"), name="a/b").card
    assert v2.version == 2 and v2.commit != v1.commit
    assert registry.show("a/b").commit == v2.commit
    assert registry.show("a/b@main").commit == v2.commit
    assert registry.show("a/b@v1").commit == v1.commit
    assert registry.show(f"a/b@{v1.commit[:7]}").commit == v1.commit
    assert registry.show(f"a/b@{v1.commit}").version == 1
    registry.tag("a/b@v1", "prod")
    assert registry.show("a/b@prod").version == 1
    assert registry.show("a/b@v1").aliases == ["prod"]
    registry.tag("a/b@v2", "prod")  # aliases move
    assert registry.show("a/b@prod").version == 2
    assert [c.version for c in registry.versions("a/b")] == [1, 2]


def test_unknown_repo_and_revision_errors(registry, adapters, tmp_path):
    registry.push(adapters("lora"), name="a/b")
    with pytest.raises(AdapterNotFound) as info:
        registry.show("a/nope")
    assert str(info.value) == f"no adapter named 'a/nope' in the registry at {registry.home}"
    with pytest.raises(RevisionNotFound) as info2:
        registry.show("a/b@v7")
    assert str(info2.value) == (
        "a/b has no revision 'v7' (latest is v1; list versions with `hub show a/b --versions`)"
    )
    with pytest.raises(RevisionNotFound):
        registry.show("a/b@staging")
    with pytest.raises(RevisionNotFound):
        registry.show("a/b@0000000")
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    with pytest.raises(RevisionNotFound):
        registry.pull("a/b@v9", outputs / "out")
    assert list(outputs.iterdir()) == []  # no partial folder anywhere


def test_pull_is_byte_identical_and_refuses_to_overwrite(registry, adapters, tmp_path):
    lora = adapters("lora")
    registry.push(lora, name="a/b")
    dest = registry.pull("a/b", tmp_path / "pulled")
    for path in lora.iterdir():
        assert (dest / path.name).read_bytes() == path.read_bytes()
    with pytest.raises(OutputExists) as info:
        registry.pull("a/b", dest)
    assert str(info.value) == (
        f"{dest} already exists and is not empty (choose another -o or pass --force)"
    )
    (dest / "README.md").write_text("edited")
    registry.pull("a/b", dest, force=True)
    assert (dest / "README.md").read_bytes() == (lora / "README.md").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub-home", "pulled"]


def test_invalid_input_leaves_registry_unchanged(registry, adapters, tmp_path):
    lora = adapters("lora")
    with pytest.raises(InvalidName):
        registry.push(lora, name="../x")
    with pytest.raises(InvalidArgument) as info:
        registry.push(lora, name="a/b", metrics=["acc"])
    assert str(info.value) == (
        "invalid --metric 'acc': expected NAME=VALUE[@DATASET], e.g. accuracy=0.71@mmlu"
    )
    with pytest.raises(InvalidAdapter):
        registry.push(tmp_path / "missing", name="a/b")
    broken = _variant(lora, tmp_path / "broken", "x")
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(InvalidAdapter):
        registry.push(broken, name="a/b")
    assert registry.search_raw() == []
    assert list(registry.store.iter_digests()) == []


def test_search_filters_and_sorting(registry, adapters, tmp_path):
    registry.push(
        adapters("lora"),
        name="team/sql-lora",
        tasks=["sql"],
        tags=["team=nlp"],
        metrics=["exact_match=0.61"],
        description="Text to SQL on spider",
    )
    registry.push(
        adapters("dora"), name="team/sql-dora", tasks=["sql"], metrics=["exact_match=0.75"]
    )
    registry.push(adapters("ia3"), name="other/chat", tasks=["chat"], tags=["team=nlp"])
    names = lambda **kw: [c["repo"] for c in registry.search_raw(**kw)]  # noqa: E731
    assert names() == ["other/chat", "team/sql-dora", "team/sql-lora"]
    assert names(method="lora") == ["team/sql-dora", "team/sql-lora"]
    assert names(method="dora") == ["team/sql-dora"]
    assert names(method="ia3") == ["other/chat"]
    assert names(rank="<=4") == ["team/sql-dora"]
    assert names(rank="4..8") == ["team/sql-dora", "team/sql-lora"]
    assert names(rank=">4") == ["team/sql-lora"]
    assert names(tasks=["sql"], sort="metric:exact_match") == ["team/sql-dora", "team/sql-lora"]
    assert names(sort="+metric:exact_match") == ["team/sql-lora", "team/sql-dora", "other/chat"]
    assert names(tags=["team=nlp"]) == ["other/chat", "team/sql-lora"]
    assert names(tags=["team"], tasks=["sql"]) == ["team/sql-lora"]
    assert names(query="spider") == ["team/sql-lora"]
    assert names(query="chat") == ["other/chat"]
    assert names(query="sql", limit=1) == ["team/sql-dora"]
    assert names(sort="rank") == ["team/sql-dora", "team/sql-lora", "other/chat"]
    base = registry.show("team/sql-lora").base_model
    assert names(base=base, method="lora") == ["team/sql-dora", "team/sql-lora"]
    assert names(base="nope/*") == []
    with pytest.raises(InvalidArgument) as info:
        registry.search_raw(rank="8..x")
    assert str(info.value) == (
        "invalid --rank '8..x': use N, LOW..HIGH, <=N, <N, >=N or >N (e.g. 8..16)"
    )
    with pytest.raises(InvalidArgument) as info:
        registry.search_raw(sort="bogus")
    assert str(info.value).startswith("invalid --sort 'bogus': choose one of base, base_model")


def test_search_latest_only_unless_all_versions(registry, adapters, tmp_path):
    lora = adapters("lora")
    registry.push(lora, name="a/b", tasks=["old"])
    registry.push(_variant(lora, tmp_path / "v2", "v2"), name="a/b", tasks=["new"])
    assert [c["version"] for c in registry.search_raw()] == [2]
    assert [c["version"] for c in registry.search_raw(all_versions=True)] == [1, 2]
    assert registry.search_raw(tasks=["old"]) == []


def test_remove_version_then_repo_and_gc(registry, adapters, tmp_path):
    lora = adapters("lora")
    registry.push(lora, name="a/b")
    registry.push(_variant(lora, tmp_path / "v2", "v2 readme"), name="a/b")
    registry.tag("a/b@v2", "prod")
    removed = registry.remove("a/b@v2")
    assert [c.version for c in removed] == [2]
    assert registry.show("a/b").version == 1
    with pytest.raises(RevisionNotFound):
        registry.show("a/b@prod")
    # Version numbers are never reused.
    assert registry.push(_variant(lora, tmp_path / "v3", "v3 readme"), name="a/b").card.version == 3
    report = registry.gc()
    assert report.blobs_removed == 1  # the v2 README
    registry.remove("a/b")
    with pytest.raises(AdapterNotFound):
        registry.show("a/b")
    assert registry.gc().blobs_removed == 4
    assert list(registry.store.iter_digests()) == []


def test_verify_names_versions_of_a_flipped_byte(registry, adapters, tmp_path):
    lora = adapters("lora")
    card = registry.push(lora, name="a/b").card
    registry.push(lora, name="c/d")
    assert registry.verify().healthy
    weights = next(f for f in card.files if f.path == "adapter_model.safetensors")
    data = bytearray(registry.store.read_bytes(weights.sha256))
    data[len(data) // 2] ^= 0x01
    overwrite_blob(registry.store, weights.sha256, bytes(data))
    report = registry.verify()
    assert not report.healthy
    assert [(p.digest, p.status, p.versions) for p in report.problems] == [
        (
            weights.sha256,
            "corrupted",
            ["a/b@v1 (adapter_model.safetensors)", "c/d@v1 (adapter_model.safetensors)"],
        )
    ]


@pytest.mark.embedded_only("the SQLite index's own file (schema version, WAL journal)")
def test_registry_survives_reopen(hub_home, adapters):
    with Registry(hub_home) as reg:
        reg.push(adapters("lora"), name="a/b")
    with Registry(hub_home) as reg:
        assert reg.show("a/b").version == 1
        assert reg.catalog.schema_version() == len(MIGRATIONS)
        mode = reg.catalog.conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


@pytest.mark.embedded_only("the SQLite index's own migrations (PostgreSQL's: test_postgres.py)")
def test_an_index_from_an_older_schema_is_migrated_in_place(hub_home, adapters, monkeypatch):
    import hub.catalog.sqlite
    import hub.catalog.sqlite_migrations

    # Write a registry as the first release did (schema 1 only: no tokens table, metric rows
    # of name, value and dataset only).
    monkeypatch.setattr(hub.catalog.sqlite_migrations, "MIGRATIONS", MIGRATIONS[:1])
    monkeypatch.setattr(
        hub.catalog.sqlite_migrations,
        "INSERT_METRIC",
        "INSERT INTO metrics (version_id, name, value, dataset) VALUES (?,?,?,?)",
    )
    monkeypatch.setattr(
        hub.catalog.sqlite,
        "metric_rows",
        lambda vid, ms: [(vid, m["name"], m["value"], m.get("dataset")) for m in ms],
    )
    with Registry(hub_home) as old:
        old.push(adapters("lora"), name="a/b", tasks=["sql"], metrics=["acc=0.5", "acc=0.7"])
        assert old.catalog.schema_version() == 1
    monkeypatch.undo()
    with Registry(hub_home) as new:
        assert new.catalog.schema_version() == len(MIGRATIONS)
        assert new.show("a/b").tasks == ["sql"]
        tables = {r[0] for r in new.catalog.conn.execute("SELECT name FROM sqlite_master")}
        assert {"tokens", "evals", "remote_evals"} <= tables
        # Migration 5 gave the old metric rows their source, priority and position.
        rows = new.catalog.conn.execute(
            "SELECT name, value, source, priority, position, higher_is_better FROM metrics"
            " ORDER BY position"
        ).fetchall()
        assert rows == [("acc", 0.5, "push", 2, 0, 1), ("acc", 0.7, "push", 2, 1, 1)]
        assert [c.repo for c in new.search(where=["metric:acc>=0.7"])] == ["a/b"]
