"""What every process on one catalog shares (hub.catalog.coordination), on both backends: the
store lock (a shared hold in one process keeps an exclusive one in another waiting, and
``gc`` waits for a push under way elsewhere) and the settings table (processes that start
at once agree on one value).

The other processes are real ones (``spawn``), each with its own connection or descriptor.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

SPAWN = multiprocessing.get_context("spawn")
WAIT_S = 60


def _hold(home: str, db: str | None, shared: bool, held: Any, release: Any) -> None:
    from hub import Registry

    with Registry(home, db=db) as reg, reg.store_lock(shared=shared):
        held.set()
        release.wait(WAIT_S)


def _push_in_flight(home: str, db: str | None, folder: str, held: Any, release: Any) -> None:
    # A push between its blob writes and its commit: Registry.push's own steps, with a pause.
    from hub import Registry
    from hub.folders import adapter_files

    with Registry(home, db=db) as reg, reg.store_lock(shared=True):
        for _rel, path in adapter_files(Path(folder)):
            reg.store.put_file(path)
        held.set()
        release.wait(WAIT_S)
        reg.push(folder, name="team/racing")


def _setting(db: str | None, home: str, start: Any, results: Any) -> None:
    from hub.catalog import open_catalog

    catalog = open_catalog(db, Path(home))
    try:
        start.wait(WAIT_S)
        results.put(catalog.setting("signing_key", os.urandom(16).hex()))
    finally:
        catalog.close()


def _child(target: Any, *args: Any) -> tuple[Any, Any]:
    """A process running ``target(*args, held, release)``, once it holds what it takes."""
    held, release = SPAWN.Event(), SPAWN.Event()
    process = SPAWN.Process(target=target, args=(*args, held, release))
    process.start()
    assert held.wait(WAIT_S), "the other process never took the lock"
    return process, release


def _in_thread(work: Any) -> tuple[threading.Event, list[Any]]:
    """Run ``work()`` in a thread: an event set when it returns, and its result."""
    done, out = threading.Event(), []

    def run() -> None:
        out.append(work())
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return done, out


def _another_host(home: Path, db: str | None) -> str:
    """The home of the other process: the same folder for the embedded index (one host); for
    a team database another one, as on another host, so no file of ours can be the lock."""
    return str(home if db is None else home.parent / "another-host")


def _acquire(home: Path, db: str | None, *, shared: bool) -> float:
    """Take the store lock in this process and release it; when it was granted."""
    from hub import Registry

    with Registry(home, db=db) as reg, reg.store_lock(shared=shared):
        return time.monotonic()


def test_a_shared_hold_in_another_process_keeps_an_exclusive_one_waiting(db_url, tmp_path):
    home = tmp_path / "home"
    process, release = _child(_hold, _another_host(home, db_url), db_url, True)
    try:
        granted, when = _in_thread(lambda: _acquire(home, db_url, shared=False))
        assert not granted.wait(1.0), "the exclusive lock was granted beside a shared one"
        released = time.monotonic()
        release.set()
        assert granted.wait(WAIT_S)
        assert when[0] >= released
    finally:
        release.set()
        process.join(WAIT_S)
    assert process.exitcode == 0


def test_two_shared_holds_in_two_processes_do_not_wait(db_url, tmp_path):
    home = tmp_path / "home"
    process, release = _child(_hold, _another_host(home, db_url), db_url, True)
    try:
        granted, _ = _in_thread(lambda: _acquire(home, db_url, shared=True))
        assert granted.wait(10), "a shared lock waited for another shared one"
    finally:
        release.set()
        process.join(WAIT_S)
    assert process.exitcode == 0


def test_an_exclusive_hold_in_another_process_keeps_a_shared_one_waiting(db_url, tmp_path):
    home = tmp_path / "home"
    process, release = _child(_hold, _another_host(home, db_url), db_url, False)
    try:
        granted, _ = _in_thread(lambda: _acquire(home, db_url, shared=True))
        assert not granted.wait(1.0), "a shared lock was granted beside the exclusive one"
        release.set()
        assert granted.wait(WAIT_S)
    finally:
        release.set()
        process.join(WAIT_S)


def _wait_exclusive(home: str, db: str | None, asked: Any, granted: Any) -> None:
    from hub import Registry

    with Registry(home, db=db) as reg:
        asked.set()
        with reg.store_lock(shared=False):
            granted.set()


def test_a_second_shared_hold_in_a_process_never_queues_behind_a_waiting_gc(db_url, tmp_path):
    # A server commit holds the lock while its push takes it again, in the same process; if
    # the second hold queued behind a gc waiting for the first, neither would ever end.
    from hub import Registry

    home = tmp_path / "home"
    with Registry(home, db=db_url) as first, first.store_lock(shared=True):
        asked, granted = SPAWN.Event(), SPAWN.Event()
        gc = SPAWN.Process(
            target=_wait_exclusive, args=(_another_host(home, db_url), db_url, asked, granted)
        )
        gc.start()
        assert asked.wait(WAIT_S)
        time.sleep(1.0)  # the other process now waits for the exclusive lock
        with Registry(home, db=db_url) as second:
            joined, _ = _in_thread(lambda: _acquire(home, db_url, shared=True))
            assert joined.wait(10), "a shared hold queued behind the waiting exclusive one"
            with second.store_lock(shared=True):
                pass
        assert not granted.is_set()
    assert granted.wait(WAIT_S)
    gc.join(WAIT_S)
    assert gc.exitcode == 0


def test_a_killed_holder_releases_the_lock(db_url, tmp_path):
    home = tmp_path / "home"
    process, _ = _child(_hold, _another_host(home, db_url), db_url, False)
    process.kill()
    process.join(WAIT_S)
    granted, _ = _in_thread(lambda: _acquire(home, db_url, shared=False))
    assert granted.wait(WAIT_S), "the lock of a killed process was never released"


def test_the_lock_is_reentrant_for_shared_holds_and_never_upgraded(db_url, tmp_path):
    from hub import Registry

    with Registry(tmp_path / "home", db=db_url) as reg:
        with reg.store_lock(shared=True), reg.store_lock(shared=True):
            with pytest.raises(AssertionError) as raised, reg.store_lock(shared=False):
                pass
            assert str(raised.value) == "the store lock is held shared: not upgradable"
        with reg.store_lock(shared=False), reg.store_lock(shared=True):
            pass
        # Released: another process may take it exclusively at once.
        other = _another_host(tmp_path / "home", db_url)
        process, release = _child(_hold, other, db_url, False)
        release.set()
        process.join(WAIT_S)
        assert process.exitcode == 0


def test_gc_waits_for_a_push_under_way_in_another_process(db_url, tmp_path, adapters):
    from hub import Registry
    from hub.folders import adapter_files
    from hub.maintenance import collect_garbage, verify_store

    home = tmp_path / "home"
    folder = adapters("lora")
    Registry(home, db=db_url).close()
    process, release = _child(_push_in_flight, str(home), db_url, str(folder))
    with Registry(home, db=db_url) as reg:
        stored = [hashlib.sha256(p.read_bytes()).hexdigest() for _, p in adapter_files(folder)]
        collected, report = _in_thread(lambda: collect_garbage(reg))
        try:
            assert not collected.wait(1.5), "gc ran while a push held the store lock"
            # The push's blobs are referenced by nothing yet: only the lock keeps them.
            assert all(reg.store.has(digest) for digest in stored)
        finally:
            release.set()
        process.join(WAIT_S)
        assert process.exitcode == 0
        assert collected.wait(WAIT_S)
    assert (report[0].blobs_removed, report[0].bytes_freed) == (0, 0)
    with Registry(home, db=db_url) as reg:
        card = reg.show("team/racing")
        assert sorted(f.sha256 for f in card.files) == sorted(stored)
        assert verify_store(reg).healthy


def test_processes_starting_at_once_agree_on_one_setting(db_url, tmp_path):
    from hub.catalog import open_catalog

    home = tmp_path / "home"
    open_catalog(db_url, home).close()  # the embedded index created before the race
    start, results = SPAWN.Event(), SPAWN.Queue()
    processes = [
        SPAWN.Process(target=_setting, args=(db_url, str(home), start, results)) for _ in range(4)
    ]
    for process in processes:
        process.start()
    time.sleep(2.0)  # all of them imported and connected, waiting on the start line
    start.set()
    values = [results.get(timeout=WAIT_S) for _ in processes]
    for process in processes:
        process.join(WAIT_S)
    assert len(set(values)) == 1
    assert len(values[0]) == 32
    catalog = open_catalog(db_url, home)
    try:
        assert catalog.setting("signing_key", "another") == values[0]
        assert catalog.setting("other_key", "its default") == "its default"
    finally:
        catalog.close()
