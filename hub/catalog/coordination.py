"""What the processes of one hub agree on besides the data, written once for both SQL
catalogs: the store lock and the ``settings`` table.

The store lock (its rule is in hub/uploads.py) must bind every process that writes to the
same blobs. The embedded index's processes share a disk, so it is an ``flock`` on
``home/locks/store.lock``; a team database's workers may sit on many hosts, so it is a
PostgreSQL session advisory lock on a connection of its own, held for the block: shared by
``pg_advisory_lock_shared`` (one session for all the shared holds of a process), exclusive
by ``pg_advisory_lock``, released when the block ends or, if the process dies, when the
server sees the connection go.

Settings are small values every worker must read alike (the key that signs Git LFS upload
links): inserted if absent, then read, so workers started at once agree on the first one.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

STORE_LOCK_KEY = 0x6875625F73746F72  # "hub_stor": the advisory lock every hub process names


class _SharedHolds:
    """The shared holds of one process, per database: one session holds the lock for all
    of them, taken by the first and released by the last. A server worker's threads then
    use one connection for their concurrent pushes, not one each (a team database's
    ``max_connections`` is counted over every worker of every host). Keyed by pid too: a
    forked child never uses its parent's session."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: dict[tuple[str, int], tuple[Any, int]] = {}

    @contextlib.contextmanager
    def hold(self, url: str, where: str) -> Iterator[None]:
        key = (url, os.getpid())
        # Taken under the guard: the process's other threads wait for the first one's
        # lock (behind a running gc), then join it.
        with self._guard:
            conn, users = self._held.get(key) or (None, 0)
            if conn is None:
                conn = _locked_session(url, where, shared=True)
            self._held[key] = (conn, users + 1)
        try:
            yield
        finally:
            with self._guard:
                conn, users = self._held[key]
                if users > 1:
                    self._held[key] = (conn, users - 1)
                else:
                    del self._held[key]
                    conn.close()  # closing the session releases the lock


_SHARED = _SharedHolds()


def _locked_session(url: str, where: str, *, shared: bool) -> Any:
    """A new connection (outside the pool: the lock belongs to its session, and a pooled
    connection held for a whole push would starve that push's own commit) holding the
    store lock."""
    from hub.catalog.postgres_db import connect_once, storage_error

    conn = connect_once(url, where)
    function = "pg_advisory_lock_shared" if shared else "pg_advisory_lock"
    try:
        conn.execute(f"SELECT {function}(%s)", (STORE_LOCK_KEY,))
    except Exception as error:
        conn.close()
        mapped = storage_error(error, where)
        if mapped is error:
            raise
        raise mapped from error
    return conn


@contextlib.contextmanager
def advisory_store_lock(url: str, where: str, *, shared: bool) -> Iterator[None]:
    """Hold the store lock of the PostgreSQL database ``url`` (``where`` for messages).

    Shared holds of one process share one session (``_SharedHolds``); an exclusive hold
    has a session of its own. Should a session break while it holds the lock (a server
    restart), the lock is gone with it: the holders are then no longer protected from a
    concurrent ``gc`` for the rest of their block, as with any server that forgot its
    sessions.

    Raises:
        IndexUnavailable: the server cannot be reached.
    """
    if shared:
        with _SHARED.hold(url, where):
            yield
        return
    conn = _locked_session(url, where, shared=False)
    try:
        yield
    finally:
        conn.close()  # closing the session releases the lock


def stored_setting(conn: Any, key: str, default: str, placeholder: str) -> str:
    """``key``'s value in the ``settings`` table on ``conn`` (inside a transaction),
    ``default`` stored first if there is none. ``placeholder``: ``?`` or ``%s``."""
    p = placeholder
    conn.execute(
        f"INSERT INTO settings (key, value) VALUES ({p}, {p}) ON CONFLICT (key) DO NOTHING",
        (key, default),
    )
    row = conn.execute(f"SELECT value FROM settings WHERE key = {p}", (key,)).fetchone()
    return str(row[0])
