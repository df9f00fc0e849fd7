"""``hub migrate``: an embedded registry moved onto PostgreSQL + a blob store and back to a
folder is the same registry on all three (commits, numbers, cards, aliases, tokens, eval
records, bytes); bad input is one ``Error:`` line and nothing written.

The team store is the ``team_store`` fixture: each test that moves blobs runs once into a
``file://`` folder and once into a bucket of a real S3 server.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from cli.output import human_size
from hub import Registry
from hub.catalog.postgres_db import location
from hub.eval_store import store_record
from hub.tokens import authenticate, create_token, revoke_token
from schemas import AuthError


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(params=["file", "s3"])
def team_store(request, tmp_path) -> str:
    """The team hub's blob store the registry moves into: a ``file://`` folder, then a bucket
    of a real S3 server (tests/s3.py)."""
    if request.param == "s3":
        return str(request.getfixturevalue("s3_store_url"))
    return (tmp_path / "team-blobs").as_uri()


def _open_team_store(url: str, tmp_path: Path):
    """The team store, opened as the hub opens it (any backend ``team_store`` names)."""
    from hub.blobstore import open_store

    return open_store(url, tmp_path / "store-home")


def _variant(src: Path, dst: Path, text: str) -> Path:
    shutil.copytree(src, dst)
    (dst / "README.md").write_text(text)
    return dst


def _eval_record(registry: Registry, ref: str, n: int) -> dict:
    """An eval record with its own dataset, per-example results and --forgetting blobs."""
    card = registry.show(ref)
    dataset = registry.store.put_bytes(b'{"text": "a b c"}\n' * n)[0]
    results = registry.store.put_bytes(b'{"row": 0, "cross_entropy": 1.5}\n' * n)[0]
    forgetting_text = registry.store.put_bytes(b"general text %d\n" % n)[0]
    forgetting_sums = registry.store.put_bytes(b"[1.0, 2.0] %d\n" % n)[0]
    record = {
        "id": f"ev-test{n:08d}",
        "ref": card.ref,
        "commit": card.commit,
        "source": "hub-eval",
        "dataset": {"sha256": dataset, "rows": n, "kind": "text", "name": "held.jsonl"},
        "metrics": {"cross_entropy": {"value": 1.5, "n": n, "higher_is_better": False}},
        "results_sha256": results,
        "forgetting": {"dataset": {"sha256": forgetting_text}, "results_sha256": forgetting_sums},
        "base": None,
        "delta": None,
        "cost": None,
        "config": {"seed": 1},
        "versions": {},
        "created_at": f"2026-01-0{n}T00:00:00+00:00",
    }
    store_record(registry, card, record)
    return record


@pytest.fixture
def source(hub_home, adapters, tmp_path):
    """An embedded registry with something of every kind: several repositories and versions
    (one removed, so the counter is ahead), an alias, a composite with lineage, a child with a
    training parent, an empty repository, tokens (one revoked), eval records (with blobs, and
    a manual one), a cached base score and a kept remote record. Returns the registry's home
    and the tokens' secrets."""
    lora = adapters("lora")
    with Registry(hub_home) as reg:
        reg.push(lora, name="team/sql", tasks=["sql"], tags=["team=nlp"], metrics=["em=0.7@spider"])
        reg.push(_variant(lora, tmp_path / "v2", "second"), name="team/sql")
        reg.push(_variant(lora, tmp_path / "v3", "third"), name="team/sql")
        reg.remove("team/sql@v3")
        reg.tag("team/sql@v1", "prod")
        reg.push(_variant(lora, tmp_path / "chat", "chat"), name="lab/chat", tasks=["chat"])
        reg.push(adapters("ia3"), name="lab/ia3")
        reg.compose(
            {"operator": "cat", "name": "team/merged", "inputs": ["team/sql@v1", "lab/chat"]}
        )
        reg.push(
            _variant(lora, tmp_path / "child", "child"), name="team/child", parent="team/sql@v2"
        )
        reg.create_repo("team/empty")
        secrets = {
            "ci": create_token(reg, "ci", read=["team"], write=["lab"]),
            "old": create_token(reg, "old", read=["*"], write=[]),
        }
        revoke_token(reg, secrets["old"].split("_")[1])
        record = _eval_record(reg, "team/sql@v2", 3)
        _eval_record(reg, "lab/chat", 4)
        reg.add_metric("team/merged", "accuracy=0.5@mmlu", n=10)
        reg.catalog.set_base_scores("base-key", record["results_sha256"])
        remote = dict(record, id="ev-remote00000001")
        reg.catalog.add_remote_eval("http://hub.internal", "team/x", "c" * 40, remote)
    return hub_home, secrets


def _versions(home_args: list[str]) -> list[str]:
    listed = json.loads(run(*home_args, "ls", "--all-versions", "--json").output)
    return sorted(f"{card['repo']}@v{card['version']}" for card in listed)


def _view(home_args: list[str], pulls: Path) -> dict:
    """What a user sees of the registry ``home_args`` name: ls, show of every version (with
    eval records), verify, and the bytes of every version pulled."""
    ls = run(*home_args, "ls", "--all-versions", "--json")
    assert ls.exit_code == 0, ls.output
    shown, files = {}, {}
    for ref in _versions(home_args):
        result = run(*home_args, "show", ref, "--json")
        assert result.exit_code == 0, result.output
        shown[ref] = json.loads(result.output)
        out = pulls / ref.replace("/", "_")
        pulled = run(*home_args, "pull", ref, "-o", out)
        assert pulled.exit_code == 0, pulled.output
        files[ref] = {
            str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()
        }
    verify = run(*home_args, "verify", "--json")
    assert verify.exit_code == 0, verify.output
    report = json.loads(verify.output)
    assert report["healthy"], report
    return {"ls": json.loads(ls.output), "show": shown, "files": files, "verify": report}


def test_embedded_to_postgres_and_back_to_a_folder_is_the_same_registry(
    source, adapters, pg_empty_url, team_store, tmp_path
):
    home, secrets = source
    where = location(pg_empty_url)
    team = ["--db", pg_empty_url, "--store", team_store, "--home", tmp_path / "team-home"]
    back = tmp_path / "back"

    moved = run("--home", home, "migrate", "--to", f"{pg_empty_url},{team_store}", "--json")
    assert moved.exit_code == 0, moved.output
    report = json.loads(moved.output)
    blobs = report["blobs"]
    assert report == {
        "source": str(home),
        "target": f"{where},{team_store}",
        "repos": 6,
        "versions": 6,
        "aliases": 1,
        "tokens": 2,
        "evals": 3,
        "remote_evals": 1,
        "base_scores": 1,
        "blobs": blobs,
        "bytes": report["bytes"],
        "blobs_copied": blobs,
        "bytes_copied": report["bytes"],
        "schema_migrations": 2,
    }
    with Registry(home) as reg:
        referenced = reg.catalog.referenced_digests()
        assert reg.catalog.export_snapshot().digests() == referenced
        assert blobs == len(referenced) and report["bytes"] == sum(map(reg.store.size, referenced))
        # The removed version's own README is not referenced: it stays behind (`hub gc`).
        assert len(list(reg.store.iter_digests())) == blobs + 1

    again = run(*team, "migrate", "--to", back)
    assert again.exit_code == 0, again.output
    team_location = _open_team_store(team_store, tmp_path).location
    assert again.output == (
        f"Migrated {where},{team_location} to {back}: 6 repos, 6 versions, 1 aliases,"
        f" 2 tokens, 3 eval records, 1 remote eval records, 1 cached base scores, {blobs} blobs"
        f" ({human_size(report['bytes'])}; {blobs} copied, 0 already there)\n"
    )

    views = [
        _view(args, tmp_path / f"pulls{i}")
        for i, args in enumerate([["--home", home], team, ["--home", back]])
    ]
    assert [view["verify"].pop("orphan_blobs") for view in views] == [1, 0, 0]
    assert views[0] == views[1] == views[2]
    shown = views[0]["show"]
    assert sorted(shown) == [
        "lab/chat@v1", "lab/ia3@v1", "team/child@v1", "team/merged@v1", "team/sql@v1",
        "team/sql@v2",
    ]  # fmt: skip
    assert shown["team/sql@v1"]["aliases"] == ["prod"]
    assert [e["id"] for e in shown["team/sql@v2"]["evals"]] == ["ev-test00000003"]
    assert shown["team/merged@v1"]["lineage"]["inputs"] == [
        f"team/sql@{shown['team/sql@v1']['commit']}", f"lab/chat@{shown['lab/chat@v1']['commit']}"
    ]  # fmt: skip
    assert shown["team/child@v1"]["parent"] == f"team/sql@{shown['team/sql@v2']['commit']}"

    fourth = _variant(adapters("lora"), tmp_path / "v4", "fourth")
    registries = [
        Registry(home),
        Registry(tmp_path / "team-home", db=pg_empty_url, store=team_store),
    ]
    registries.append(Registry(back))
    try:
        snapshots = [reg.catalog.export_snapshot() for reg in registries]
        assert snapshots[0] == snapshots[1] == snapshots[2]
        for reg in registries:
            token = authenticate(reg, secrets["ci"])
            assert (token.name, token.read, token.write) == ("ci", ("team",), ("lab",))
            with pytest.raises(AuthError, match="invalid or revoked token"):
                authenticate(reg, secrets["old"])
            assert reg.catalog.remote_evals("http://hub.internal", "team/x", "c" * 40)[0]["id"] == (
                "ev-remote00000001"
            )
            assert reg.catalog.base_scores("base-key") == snapshots[0].base_scores[0][1]
            # The version counter moved too: a removed number is not given again.
            assert reg.push(fourth, name="team/sql").card.version == 4
    finally:
        for reg in registries:
            reg.close()


# -- bad input: one Error: line, nothing written --------------------------------------------


@pytest.fixture
def small(hub_home, adapters):
    """A registry of one version with an eval record: ``(home, card)``."""
    with Registry(hub_home) as reg:
        card = reg.push(adapters("lora"), name="team/a").card
        _eval_record(reg, "team/a", 2)
    return hub_home, card


def _state(home: Path) -> tuple:
    """Everything the registry in ``home`` holds: its rows and its blobs' bytes."""
    with Registry(home) as reg:
        blobs = {d: reg.store.read_bytes(d) for d in reg.store.iter_digests()}
        return reg.catalog.export_snapshot(), blobs


FORM = (
    "give DB_URL,STORE_URL (postgresql://USER@HOST/DB,s3://BUCKET/PREFIX or"
    " postgresql://USER@HOST/DB,file:///DIR) or a folder for an embedded registry"
)


@pytest.mark.parametrize(
    ("to", "message"),
    [
        ("", f"invalid --to '': {FORM}"),
        (
            "postgresql://hub@db/hub",
            "invalid --to 'postgresql://hub@db/hub': one URL is not a registry (a catalog needs"
            f" a store for its blobs); {FORM}",
        ),
        (
            "file:///srv/blobs",
            "invalid --to 'file:///srv/blobs': one URL is not a registry (a catalog needs"
            f" a store for its blobs); {FORM}",
        ),
        (
            "mysql://hub@db/hub,file:///srv/blobs",
            "invalid --to 'mysql://hub@db/hub,file:///srv/blobs': the catalog URL must be"
            f" postgresql://USER@HOST/DB, not 'mysql://'; {FORM}",
        ),
        (
            "postgresql://hub@db/hub,ftp://blobs/x",
            "invalid --to 'postgresql://hub@db/hub,ftp://blobs/x': unknown store scheme"
            f" 'ftp://' after the comma (known: file://, s3://); {FORM}",
        ),
        (
            "postgresql://hub:s3cret@db:port/hub,file:///srv/blobs",
            "invalid --to 'postgresql://hub:***@db:port/hub,file:///srv/blobs':"
            f" 'postgresql://hub:***@db:port/hub' is not a PostgreSQL connection URL; {FORM}",
        ),
        (
            "postgresql://hub@127.0.0.1:1/hub,file://relative/blobs",
            "invalid --to 'postgresql://hub@127.0.0.1:1/hub,file://relative/blobs': --store"
            " 'file://relative/blobs': a file:// store URL names an absolute folder"
            " (file:///srv/blobs)",
        ),
    ],
)
def test_a_malformed_target_is_one_error_line_naming_to(small, to, message):
    home, _ = small
    before = _state(home)
    result = run("--home", home, "migrate", "--to", to)
    assert result.exit_code == 1
    assert result.output == f"Error: {message}\n"
    assert "s3cret" not in result.output
    assert _state(home) == before
    assert not Path("/srv/blobs").exists() and not Path("relative").exists()


def test_a_target_that_is_the_source_a_file_or_someone_s_folder_is_refused(small, tmp_path):
    home, _ = small
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("mine")
    for to, message in [
        (home, f"invalid --to '{home}': that is the source registry itself; give an empty"
         " database or folder elsewhere"),
        (tmp_path / "notes.txt", f"invalid --to '{tmp_path / 'notes.txt'}': it is a file, not"
         " a folder"),
        (tmp_path / "docs", f"invalid --to '{tmp_path / 'docs'}': the folder holds other files"
         " (a.md), not a registry; give a new or empty folder"),
    ]:  # fmt: skip
        result = run("--home", home, "migrate", "--to", to)
        assert (result.exit_code, result.output) == (1, f"Error: {message}\n")
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == ["a.md"]


def test_a_non_empty_target_is_refused_before_any_work(
    small, adapters, pg_url, team_store, tmp_path
):
    home, _ = small
    where = location(pg_url)
    with Registry(tmp_path / "team-home", db=pg_url, store=team_store) as team:
        create_token(team, "ci", read=["team"], write=[])
    result = run("--home", home, "migrate", "--to", f"{pg_url},{team_store}")
    assert result.exit_code == 1
    assert result.output == (
        f"Error: the target {where},{team_store} is not empty (1 tokens): `hub migrate` moves a"
        " registry only into an empty one; give a new database or folder (nothing was"
        " written)\n"
    )
    assert list(_open_team_store(team_store, tmp_path).iter_digests()) == []  # not one blob copied

    other = tmp_path / "other"
    with Registry(other) as reg:
        reg.push(adapters("ia3"), name="lab/ia3")
        reg.create_repo("lab/empty")
    before = _state(other)
    result = run("--home", home, "migrate", "--to", other)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: the target {other} is not empty (2 repos, 1 versions): `hub migrate` moves a"
        " registry only into an empty one; give a new database or folder (nothing was"
        " written)\n"
    )
    assert _state(other) == before


def test_an_unreachable_database_names_to_and_writes_nothing(small, team_store, tmp_path):
    home, _ = small
    before = _state(home)
    result = run(
        "--home", home, "migrate", "--to", f"postgresql://hub:s3cret@127.0.0.1:1/hub,{team_store}"
    )
    assert result.exit_code == 1
    assert result.output.startswith(
        f"Error: --to postgresql://hub@127.0.0.1:1/hub,{team_store}: cannot reach the database"
        " postgresql://hub@127.0.0.1:1/hub: "
    ), result.output
    assert result.output.endswith("; check that the server is up and retry (nothing was changed)\n")
    assert len(result.output.splitlines()) == 1 and "s3cret" not in result.output
    assert list(_open_team_store(team_store, tmp_path).iter_digests()) == []
    assert _state(home) == before


def _weights(home: Path, card) -> tuple[str, Path]:
    """The digest of ``card``'s adapter_model.safetensors and its file in the store."""
    [digest] = [f.sha256 for f in card.files if f.path == "adapter_model.safetensors"]
    with Registry(home) as reg:
        path = reg.store.local_path(digest)
    assert path is not None
    return digest, path


def test_a_source_with_a_missing_or_truncated_blob_is_refused_before_any_write(
    small, pg_empty_url, team_store, tmp_path
):
    home, card = small
    digest, path = _weights(home, card)
    data = path.read_bytes()
    to = f"{pg_empty_url},{team_store}"
    store = home / "store"
    for damage, what in [
        (lambda: path.unlink(), f"is missing from {store}"),
        (
            lambda: path.write_bytes(data[:100]),
            f"is 100 bytes in {store}, not {len(data)}: truncated or overwritten",
        ),
    ]:
        damage()
        result = run("--home", home, "migrate", "--to", to)
        assert result.exit_code == 1
        assert result.output == (
            f"Error: the source registry is damaged: blob {digest[:12]} of team/a@v1"
            f" (adapter_model.safetensors) {what}; repair it and check it with `hub verify`"
            " before migrating (nothing was written)\n"
        )
        # Nothing written: no blob, and the database has not even been given the schema.
        assert list(_open_team_store(team_store, tmp_path).iter_digests()) == []
        with Registry(home, db=pg_empty_url) as team:
            assert team.catalog.schema_version() == 0
        path.unlink(missing_ok=True)
        path.write_bytes(data)


def test_a_blob_damaged_in_place_stops_the_copy_and_a_rerun_resumes(small, tmp_path):
    home, card = small
    digest, path = _weights(home, card)
    data = bytearray(path.read_bytes())
    path.chmod(0o644)
    path.write_bytes(bytes(data[:-1]) + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    target = tmp_path / "copy"
    result = run("--home", home, "migrate", "--to", target)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: the source registry is damaged: blob {digest[:12]} of team/a@v1"
        f" (adapter_model.safetensors) no longer matches its sha256 in {home / 'store'};"
        " repair it and check it with `hub verify`, then run the same `hub migrate` again to"
        " resume (the target's catalog was not written; the blobs copied so far stay in its"
        " store, unreferenced: `hub gc` there removes them)\n"
    )
    with Registry(home) as reg:
        referenced = reg.catalog.referenced_digests()
    with Registry(target) as copy:
        assert set(copy.catalog.row_counts().values()) == {0}
        copied = set(copy.store.iter_digests())
        # Copied in digest order, up to the damaged one, which is not published.
        assert copied == {d for d in referenced if d < digest}
    path.write_bytes(bytes(data))  # repaired
    resumed = run("--home", home, "migrate", "--to", target, "--json")
    assert resumed.exit_code == 0, resumed.output
    report = json.loads(resumed.output)
    assert report["blobs_copied"] == report["blobs"] - len(copied)
    assert _state(target)[0] == _state(home)[0]


def test_a_damaged_source_index_is_refused(small, tmp_path):
    home, _ = small
    (home / "index.db").write_bytes(b"not a database" * 100)
    for leftover in ("index.db-wal", "index.db-shm"):
        (home / leftover).unlink(missing_ok=True)
    result = run("--home", home, "migrate", "--to", tmp_path / "copy")
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: the index {home / 'index.db'} is damaged ")
    assert len(result.output.splitlines()) == 1
    assert not (tmp_path / "copy").exists()


def test_import_snapshot_is_one_transaction_on_each_backend(small, backend, request, tmp_path):
    """A catalog refuses a snapshot when it is not empty, and a snapshot that fails half way
    (an alias of a version it does not hold) leaves no row behind."""
    from dataclasses import replace

    from schemas import OutputExists

    home, _ = small
    snap = _state(home)[0]
    db = request.getfixturevalue("pg_url") if backend == "postgres" else None
    with Registry(tmp_path / "target", db=db) as target:
        broken = replace(snap, aliases=[("team/a", "prod", "f" * 40)])
        with pytest.raises(KeyError):
            target.catalog.import_snapshot(broken)
        assert set(target.catalog.row_counts().values()) == {0}
        target.catalog.import_snapshot(snap)
        assert target.catalog.export_snapshot() == snap
        assert target.catalog.referenced_digests() == snap.digests() and len(snap.digests()) == 7
        with pytest.raises(OutputExists, match=r"is not empty \(1 repos, 1 versions, 1 evals\)"):
            target.catalog.import_snapshot(snap)
        assert target.catalog.export_snapshot() == snap
    assert snap.difference(replace(snap, evals=[])) == (
        "evals: 1 rows against 0, first differing at 0"
    )
    # A NaN in a record (never == itself) reads back as the same record.
    record = dict(snap.evals[0].record, config={"stderr": float("nan")})
    odd = replace(snap, evals=[replace(snap.evals[0], record=record)])
    with Registry(
        tmp_path / "nan", db=request.getfixturevalue("pg_empty_url") if db else None
    ) as nan:
        nan.catalog.upgrade()
        nan.catalog.import_snapshot(odd)
        assert odd.difference(nan.catalog.export_snapshot()) is None
        # ... and gc / verify still read which blobs it keeps (SQLite's json_extract refused
        # the whole query over one NaN).
        assert nan.catalog.referenced_digests() == odd.digests()


def test_the_readme_commands_run_as_written(small, pg_empty_url, team_store, tmp_path):
    """README's "Move an existing embedded registry" block, with this test's database and
    store in place of the example's."""
    from tests.test_readme import _blocks, _run_block, _workspace_bin

    home, _ = small
    (block,) = _blocks("bash", "### Move an existing embedded registry onto the team hub")
    block = block.replace("postgresql://hub@db.internal/hub", f"'{pg_empty_url}'")
    block = block.replace("s3://team-hub/blobs", f"'{team_store}'")
    _run_block(block, tmp_path, _workspace_bin(tmp_path))
    assert _state(tmp_path / "hub-copy") == _state(home)


def test_a_store_shared_with_the_target_copies_no_blob(small, pg_empty_url, tmp_path):
    """Moving only the catalog (the team hub keeps using the same blob folder): every blob is
    there already, nothing is copied and the source's store is not written."""
    home, _ = small
    before = _state(home)
    shared = (home / "store").as_uri()
    result = run("--home", home, "migrate", "--to", f"{pg_empty_url},{shared}", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["blobs"], report["blobs_copied"], report["bytes_copied"]) == (7, 0, 0)
    assert _state(home) == before
    with Registry(tmp_path / "team-home", db=pg_empty_url, store=shared) as team:
        assert team.catalog.export_snapshot() == before[0] and team.verify().healthy


def test_a_bucket_that_does_not_exist_names_to_before_the_schema_is_written(
    small, pg_empty_url, s3_store_url, tmp_path
):
    home, _ = small
    missing = "s3://no-such-bucket/hub"
    result = run("--home", home, "migrate", "--to", f"{pg_empty_url},{missing}")
    assert result.exit_code == 1
    assert result.output.startswith(
        f"Error: --to {location(pg_empty_url)},{missing}: blob store {missing} is unavailable"
        " (NoSuchBucket: "
    ), result.output
    assert len(result.output.splitlines()) == 1
    with Registry(tmp_path / "team-home", db=pg_empty_url) as team:
        assert team.catalog.schema_version() == 0
