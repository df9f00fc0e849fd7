"""Real processes killed mid-flight leave leftovers that the next pull/export or `hub gc`
removes; `hub tag` racing `hub rm` is a clear error."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hub import Registry


def _cli(home: Path, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HUB_HOME": str(home)},
    )


def _kill_when(proc: subprocess.Popen[str], found, timeout: float = 120.0) -> list[Path]:
    """SIGKILL ``proc`` as soon as ``found()`` returns paths; those paths."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if paths := found():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return paths
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    pytest.fail(f"never saw the folder before the process ended: {proc.communicate()}")


def _age(path: Path) -> None:
    """Backdate ``path`` by an hour: past any grace period (``compose.staging.GRACE_S``)."""
    old = time.time() - 3600
    os.utime(path, (old, old), follow_symlinks=False)


@pytest.fixture
def big_adapter(adapters, tmp_path_factory):
    """An adapter with a 64 MiB extra file, so that a pull takes long enough to be killed."""
    folder = tmp_path_factory.mktemp("big") / "big"
    shutil.copytree(adapters("lora"), folder)
    with open(folder / "extra.bin", "wb") as fh:
        fh.write(os.urandom(1 << 20) * 64)
    return folder


@pytest.mark.usefixtures("deployment")  # embedded, then team (PostgreSQL + S3)
def test_killed_pull_leftover_is_removed_by_the_next_pull(
    registry, hub_home, big_adapter, tmp_path
):
    with registry as reg:
        reg.push(big_adapter, name="team/big")
    dest = tmp_path / "out" / "big"
    proc = _cli(hub_home, "pull", "team/big", "-o", dest)
    (leftover,) = _kill_when(proc, lambda: list(dest.parent.glob(".big.hub-*.incomplete")))
    assert leftover.is_dir() and not dest.exists()
    with registry as reg:
        reg.pull("team/big", dest)  # a young leftover is not touched: its writer may be alive
        assert leftover.is_dir()
        _age(leftover)
        reg.pull("team/big", dest, force=True)
    assert not leftover.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["big"]


def test_a_staging_folder_in_use_is_never_swept(tmp_path):
    from compose.staging import staged_folder, sweep

    target = tmp_path / "out"
    with staged_folder(target, force=False) as staging:
        _age(staging)
        assert sweep(tmp_path, lambda name: True) == 0  # held by this process
        assert staging.is_dir()
    assert target.is_dir()


@pytest.mark.parametrize("command", ["compose", "export"])
@pytest.mark.usefixtures("deployment")  # embedded, then team (PostgreSQL + S3)
def test_killed_compose_or_export_scratch_is_removed_by_gc(
    registry, hub_home, adapters, base_dir, tmp_path, command
):
    with registry as reg:
        reg.push(adapters("lora"), name="team/a")
        reg.push(adapters("lora"), name="team/b")
    args = {
        "compose": ["compose", "linear", "team/a", "team/b", "--name", "team/ab"],
        "export": ["export", "team/a", "--base", base_dir, "-o", tmp_path / "merged"],
    }[command]
    scratch_root = hub_home / "tmp"
    proc = _cli(hub_home, *args)
    (scratch,) = _kill_when(proc, lambda: list(scratch_root.glob(f"{command}-*")))
    assert scratch.is_dir()
    gc = _cli(hub_home, "gc")
    assert gc.communicate()[0] == "Removed 0 blobs, freed 0 B\n"  # too young to be sure
    assert scratch.is_dir()
    _age(scratch)
    gc = _cli(hub_home, "gc")
    assert gc.communicate()[0] == (
        "Removed 0 blobs, freed 0 B; removed 1 abandoned scratch folders\n"
    )
    assert not scratch.exists()
    with registry as reg:
        assert reg.verify().healthy
        assert [r["repo"] for r in reg.search_raw()] == ["team/a", "team/b"]


def _has_open(pid: int, path: Path) -> bool:
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd) == str(path) for fd in fd_dir.iterdir())
    except OSError:
        return False


def test_tag_racing_rm_is_a_clear_error(hub_home, adapters):
    with Registry(hub_home) as reg:
        reg.push(adapters("lora"), name="team/sql")
        catalog = reg.catalog
        with catalog.write() as conn:
            # `hub tag` reads the version, then waits here for the write lock we hold ...
            proc = _cli(hub_home, "tag", "team/sql@v1", "prod")
            deadline = time.monotonic() + 60
            while not _has_open(proc.pid, hub_home / "index.db"):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.01)
            time.sleep(1.0)  # it has opened the index; let it resolve v1 and block on the lock
            # ... while a remover commits first (what `hub rm team/sql` writes).
            ids = [row[0] for row in conn.execute("SELECT id FROM versions")]
            catalog._delete_versions(conn, ids)
            conn.execute("DELETE FROM repos")
        out, err = proc.communicate(timeout=120)
    assert (proc.returncode, out, err) == (
        1,
        "",
        "Error: team/sql@v1 was removed while `hub tag` ran; nothing was tagged\n",
    )
    with Registry(hub_home) as reg:
        assert reg.catalog.conn.execute("SELECT * FROM aliases").fetchall() == []
