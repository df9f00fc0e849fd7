"""Folders that appear whole or not at all, and scratch folders that never outlive a crash.

``staged_folder`` writes into ``.<name>.hub-XXXXXXXX.incomplete`` next to the destination and
renames it into place at the end (the one atomic-folder helper: pulls, exports, convert).
Light on imports: ``hub pull`` uses it.
``work_folder`` makes a scratch folder under a known root (the registry's ``tmp/``).

Both hold an ``flock`` on the folder while it is in use. The kernel releases it when the
process dies, even by SIGKILL, so ``sweep`` can tell a leftover from a folder still being
written: it removes only folders nobody holds that are older than ``GRACE_S`` (the grace covers
the instant between creating a folder and locking it). The next pull or export to the same
destination sweeps that destination's leftovers; ``hub gc`` sweeps the registry's ``tmp/``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from schemas.errors import OutputExists

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, leftovers are kept
    fcntl = None  # type: ignore[assignment]

GRACE_S = 60.0
"""A folder younger than this is never swept, locked or not."""


@contextlib.contextmanager
def _held(folder: Path) -> Iterator[None]:
    """Hold a shared flock on ``folder`` (a directory descriptor) for the block."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        if fcntl is not None:
            # A file system without flock on folders: the folder is then never swept (the
            # sweeper's own flock fails the same way), which is safe.
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _abandoned(folder: Path, now: float, grace: float) -> bool:
    """True when ``folder`` is older than ``grace`` seconds and no live process holds it."""
    try:
        if now - folder.lstat().st_mtime < grace or folder.is_symlink() or not folder.is_dir():
            return False
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        if fcntl is None:  # pragma: no cover
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # held: its writer is alive
        return True
    finally:
        os.close(fd)


def sweep(parent: Path, matches: Callable[[str], bool], *, grace: float = GRACE_S) -> int:
    """Remove the abandoned folders directly in ``parent`` whose names ``matches``; return
    how many were removed. Never raises: cleaning up is best effort."""
    removed = 0
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in list(parent.iterdir()):
            if matches(entry.name) and _abandoned(entry, now, grace):
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
    return removed


def _leftover_of(target: Path) -> Callable[[str], bool]:
    prefix = f".{target.name}.hub-"
    return lambda name: name.startswith(prefix) and name.endswith((".incomplete", ".old"))


def check_output(target: Path, *, force: bool) -> None:
    """Refuse an existing, non-empty ``target`` unless ``force``.

    Raises:
        OutputExists: with the path and the fix.
    """
    if target.exists() and not force and (not target.is_dir() or any(target.iterdir())):
        raise OutputExists(
            f"{target} already exists (choose another -o or pass --force to replace it)",
            path=str(target),
        )


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories can't be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``);
    False where the system or the file system has no such call."""
    if sys.platform != "linux":
        return False
    import ctypes

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # glibc < 2.28, musl
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes.append(ctypes.c_uint)
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_folder(staging: Path, target: Path) -> None:
    """Put the folder ``staging`` at ``target``, replacing what is there: the path always
    holds a complete folder, old or new (two renames, the old folder aside first, where no
    atomic exchange exists), and the old one is deleted only after."""
    if target.exists():
        if _exchange(staging, target):
            if staging.is_dir():  # now the old folder (or file)
                shutil.rmtree(staging, ignore_errors=True)
            else:
                staging.unlink()
        else:
            trash = target.parent / f".{target.name}.hub-{uuid.uuid4().hex[:8]}.old"
            os.replace(target, trash)
            os.replace(staging, target)
            shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, target)
    fsync_dir(target.parent)


@contextlib.contextmanager
def staged_folder(target: Path, *, force: bool) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``target`` (``replace_folder``:
    one atomic exchange where the system has one, the old folder deleted only after).

    Leftovers of earlier, killed writes to ``target`` are removed first (see ``sweep``).

    Example:
        >>> with staged_folder(Path("out/merged"), force=False) as tmp:   # doctest: +SKIP
        ...     (tmp / "config.json").write_text("{}")
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep(target.parent, _leftover_of(target))
    staging = target.parent / f".{target.name}.hub-{uuid.uuid4().hex[:8]}.incomplete"
    staging.mkdir()
    try:
        with _held(staging):
            yield staging
            check_output(target, force=force)  # someone may have created it meanwhile
            replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


WORK_PREFIXES = ("compose-", "export-", "load-", "eval-", "materialize-")
"""The scratch folders ``work_folder`` makes (and ``sweep_work`` removes once abandoned)."""


@contextlib.contextmanager
def work_folder(root: Path, purpose: str) -> Iterator[Path]:
    """A scratch folder ``root/<purpose>-XXXXXXXX``, removed at the end of the block.

    ``purpose`` is one of ``compose``, ``export``, ``load``, ``eval``, ``materialize`` (the
    local blob store's own); a SIGKILLed process leaves the folder behind, unlocked, for
    ``sweep_work`` to remove.
    """
    if f"{purpose}-" not in WORK_PREFIXES:
        raise ValueError(f"unknown scratch purpose {purpose!r}")
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"{purpose}-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        with _held(folder):
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sweep_work(root: Path, *, grace: float = GRACE_S) -> int:
    """Remove abandoned ``work_folder`` folders under ``root``; return how many."""
    return sweep(root, lambda name: name.startswith(WORK_PREFIXES), grace=grace)
