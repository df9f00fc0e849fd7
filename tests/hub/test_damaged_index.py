"""A lost, damaged, read-only or full index: one clear `Error:` line naming the file, and
nothing deleted (`verify` says unhealthy, `gc` refuses)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from hub import Registry


def _hub(*args, ok=True):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def _blobs(home: Path) -> list[Path]:
    return sorted(p for p in (home / "store" / "blobs").rglob("*") if p.is_file())


@pytest.fixture
def pushed(hub_home, adapters):
    with Registry(hub_home) as reg:
        reg.push(adapters("lora"), name="team/sql")
        reg.push(adapters("ia3"), name="team/ia3")
    return _blobs(hub_home)


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_lost_index_is_damage_and_gc_deletes_nothing(hub_home, pushed, adapters, damage):
    index = hub_home / "index.db"
    if damage == "deleted":
        for path in hub_home.glob("index.db*"):
            path.unlink()
    else:
        index.write_bytes(b"")
    state = "missing" if damage == "deleted" else "empty"
    message = (
        f"the index {index} is {state} but the store {hub_home / 'store'} holds"
        f" {len(pushed)} blobs: which versions they belong to is lost. Restore index.db from a"
        " backup (blobs are named by content, not by adapter, so the index cannot be rebuilt"
        f" from them); to start an empty registry here instead, move {hub_home / 'store'}"
        " aside first. Until then every command, gc included, refuses"
    )

    verify = _hub("verify", ok=False)
    assert verify.exit_code == 1
    assert verify.stdout == "Checked 0 blobs (0 B), database: DAMAGED, orphan blobs: 0\n"
    assert verify.stderr == f"Error: index database: {message}\n"

    for args in (["gc"], ["ls"], ["push", adapters("lora"), "--name", "team/new"]):
        result = _hub(*args, ok=False)
        assert (result.exit_code, result.stderr) == (1, f"Error: {message}\n"), args
    assert _blobs(hub_home) == pushed
    assert index.exists() == (damage == "emptied")  # refusing created nothing


def test_removing_every_version_then_gc_still_frees_the_store(hub_home, pushed):
    # The legitimate empty index: the versions were removed, so their blobs are garbage.
    _hub("rm", "team/sql")
    _hub("rm", "team/ia3")
    assert _hub("gc").stdout.startswith(f"Removed {len(pushed)} blobs")
    assert _blobs(hub_home) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_index_is_one_line_and_verify_reports_it(hub_home, pushed, damage):
    index = hub_home / "index.db"
    if damage == "garbage":
        index.write_bytes(b"this is not an SQLite file\n" * 200)
    else:
        data = index.read_bytes()
        assert len(data) > 8192
        index.write_bytes(data[: len(data) // 3])
    prefix, suffix = (
        f"Error: the index {index} is damaged (",
        "): it was truncated or overwritten. Restore it from a backup; the store's blobs are"
        " untouched\n",
    )
    for args in (["ls"], ["show", "team/sql"], ["gc"]):
        result = _hub(*args, ok=False)
        assert result.exit_code == 1, args
        assert result.stderr.startswith(prefix) and result.stderr.endswith(suffix), result.stderr
        assert result.stderr.count("\n") == 1
    verify = _hub("verify", ok=False)
    assert verify.exit_code == 1
    assert "database: DAMAGED" in verify.stdout
    assert verify.stderr.startswith(f"Error: index database: the index {index} is damaged (")
    assert _blobs(hub_home) == pushed


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_home_is_one_line_naming_the_index(tmp_path, monkeypatch, adapters):
    with _tmpfs(tmp_path / "rw", "16m") as writable:
        with Registry(writable) as reg:  # closed: SQLite removes index.db-wal and -shm
            reg.push(adapters("lora"), name="team/sql")
        # The same files through a read-only bind mount: a read-only HUB_HOME.
        home = tmp_path / "ro"
        home.mkdir()
        subprocess.run(["mount", "--bind", str(writable), str(home)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(home)], check=True)
            monkeypatch.setenv("HUB_HOME", str(home))
            for args in (["ls"], ["show", "team/sql"], ["verify"]):
                result = _hub(*args, ok=False)
                assert result.exit_code == 1, args
                assert result.stderr.startswith(
                    f"Error: cannot open the index {home / 'index.db'} ("
                ), result.stderr
                assert result.stderr.endswith(
                    f"): {home} must be writable by you, since SQLite keeps index.db-wal and"
                    " index.db-shm beside it; fix its permissions or use another --home\n"
                )
        finally:
            subprocess.run(["umount", "-l", str(home)], check=False)
        monkeypatch.setenv("HUB_HOME", str(writable))
        assert [line.split()[0] for line in _hub("ls").stdout.splitlines()[1:]] == ["team/sql@v1"]


def test_full_disk_is_one_line_and_loses_nothing(tmp_path, monkeypatch, adapters):
    lora = adapters("lora")
    with _tmpfs(tmp_path / "small", "8m") as home:
        monkeypatch.setenv("HUB_HOME", str(home))
        _hub("push", lora, "--name", "team/sql")
        before = _blobs(home)
        variant = tmp_path / "variant"
        shutil.copytree(lora, variant)
        (variant / "README.md").write_text("another variant\n")
        filler = home / "filler"
        # Unbuffered: a buffer left over from the failed write would raise again on close.
        with open(filler, "wb", buffering=0) as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        push = _hub("push", variant, "--name", "team/sql", ok=False)
        assert push.exit_code == 1
        assert push.stderr.startswith(f"Error: no space left in the store {home / 'store'}")
        assert push.stderr.endswith(": free space there and push again (nothing was registered)\n")
        listed = _hub("ls", ok=False)  # may still work, or fail: with one line naming the index
        if listed.exit_code:
            assert listed.stderr.startswith(f"Error: cannot read or write the index {home}")
            assert listed.stderr.count("\n") == 1
        filler.unlink()
        assert _blobs(home) == before
        assert [c.version for c in Registry(home).versions("team/sql")] == [1]
        assert _hub("verify").stdout.endswith("Registry is healthy.\n")
