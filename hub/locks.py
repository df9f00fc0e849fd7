"""Inter-process file locks that die with their holder.

The store lock (``Registry.store_lock``: pushes hold it *shared* while they write blobs and
commit metadata, ``gc`` *exclusive*) is the catalog's (``hub.catalog.coordination``); on the
embedded index it is ``file_lock`` on ``home/locks/store.lock``. Server uploads arrive before
their commit: hub/uploads.py states how they are kept (a lock on each temp file while it is
written, then an upload record). ``flock`` locks are released by the kernel when a process
dies, so a SIGKILLed push never wedges the store, and its temp files become fair game.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: fall back to an exclusive file lock
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold an advisory lock on ``path`` (created if needed) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        from filelock import FileLock

        with FileLock(str(path) + ".flock"):
            yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def hold_file(fd: int) -> None:
    """Lock the open file ``fd`` for its writer, until the descriptor is closed."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)


def try_hold_file(fd: int) -> bool:
    """Lock ``fd`` if no one else holds it; False when a live writer does."""
    if fcntl is None:  # pragma: no cover - no way to tell: treat the file as abandoned
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
