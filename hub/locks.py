"""Inter-process locks that die with their holder.

Pushes hold the store lock *shared* while they write blobs and commit metadata; ``gc`` holds
it *exclusive*, so it never deletes a blob a live push is about to reference. ``flock`` locks
are released by the kernel when a process dies, so a SIGKILLed push never wedges the store.
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
