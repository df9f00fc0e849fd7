"""Concurrent pushes from real processes, and pushes killed with SIGKILL mid-flight."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from hub import Registry

PUSH_SCRIPT = """
import os, sys
from hub import Registry
home, name = sys.argv[1], sys.argv[2]
env = os.environ.get
with Registry(home, db=env("HUB_DATABASE_URL"), store=env("HUB_STORE_URL")) as reg:
    for folder in sys.argv[3:]:
        reg.push(folder, name=name)
"""


def _variants(src, root, count, prefix):
    out = []
    for i in range(count):
        dst = root / f"{prefix}-{i}"
        shutil.copytree(src, dst)
        (dst / "README.md").write_text(f"variant {prefix} {i}")
        out.append(dst)
    return out


@pytest.mark.parametrize("processes", [2, 8])
@pytest.mark.usefixtures("deployment")  # embedded, then team (PostgreSQL + S3)
def test_concurrent_pushes_lose_nothing(registry, hub_home, adapters, tmp_path, processes):
    lora = adapters("lora")
    per_process = 3
    jobs = []
    for p in range(processes):
        # Half the processes share one repository, the others each push to their own.
        name = "team/shared" if p % 2 == 0 else f"team/own-{p}"
        folders = _variants(lora, tmp_path, per_process, f"p{p}")
        jobs.append((name, folders))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PUSH_SCRIPT, str(hub_home), name, *map(str, folders)]
        )
        for name, folders in jobs
    ]
    assert [proc.wait(timeout=240) for proc in procs] == [0] * processes

    with registry as reg:
        for name in {name for name, _ in jobs}:
            expected_readmes = sorted(
                (folder / "README.md").read_text()
                for job_name, folders in jobs
                if job_name == name
                for folder in folders
            )
            versions = reg.versions(name)
            assert [c.version for c in versions] == list(range(1, len(expected_readmes) + 1))
            readmes = sorted(reg.read_file(card, "README.md").decode() for card in versions)
            assert readmes == expected_readmes
            # Each version's parent is the one before it: the history is a line.
            commits = [c.commit for c in versions]
            assert len(set(commits)) == len(commits)
        assert reg.verify().healthy


def _wait_for(predicate, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.0005)
    return False


def _assert_consistent(home, name):
    with Registry(home) as reg:
        report = reg.verify()
        assert report.healthy, report.problems
        cards = reg.search_raw(all_versions=True)
        for card in cards:  # anything visible is complete
            for entry in card["files"]:
                assert reg.store.check(entry["sha256"]) is None
        gc = reg.gc()
        assert reg.verify().orphan_blobs == 0
        assert not reg.store.tmp.exists() or not any(reg.store.tmp.iterdir())
        return cards, gc


def test_sigkill_at_any_point_leaves_registry_consistent(hub_home, adapters, tmp_path):
    big = tmp_path / "big"
    shutil.copytree(adapters("lora"), big)
    with open(big / "training_state.dat", "wb") as fh:
        block = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB
        for _ in range(192):
            fh.write(block)
    Registry(hub_home).close()  # the index exists before the kills start

    def start():
        return subprocess.Popen(
            [sys.executable, "-c", PUSH_SCRIPT, str(hub_home), "team/big", str(big)]
        )

    store_tmp = hub_home / "store" / "tmp"
    blobs = hub_home / "store" / "blobs" / "sha256"
    kill_points = {
        "while a blob is being written": lambda: (
            store_tmp.is_dir() and any(p.stat().st_size > 0 for p in store_tmp.iterdir())
        ),
        "after the first blob is durable": lambda: blobs.is_dir() and any(blobs.iterdir()),
    }
    outcomes = {}
    for label, predicate in kill_points.items():
        proc = start()
        hit = _wait_for(predicate, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert hit, f"push finished before the kill point '{label}'"
        cards, _ = _assert_consistent(hub_home, "team/big")
        outcomes[label] = len(cards)
    assert outcomes == {label: 0 for label in kill_points}

    # Kills at spread-out moments, some of which land after the commit.
    for delay in (0.2, 0.5, 0.8, 1.1, 1.5, 2.0, 3.0):
        proc = start()
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        cards, _ = _assert_consistent(hub_home, "team/big")
        assert len(cards) in (0, 1)
    # Whatever happened, a clean push afterwards works and yields a dense history.
    assert start().wait(timeout=120) == 0
    with Registry(hub_home) as reg:
        assert [c.version for c in reg.versions("team/big")] == [1]
        entry = {f.path: f for f in reg.show("team/big").files}["training_state.dat"]
        assert entry.size == 192 * 1024 * 1024
    print(json.dumps(outcomes))
