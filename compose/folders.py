"""Output folders that appear whole or not at all: the one place for it (exports, pulls).

A folder is written into ``.<name>.hub-XXXX.incomplete`` next to the destination and renamed
into place at the end, so a failure (or Ctrl-C) leaves nothing behind, and an existing folder is
only replaced when the caller forces it: swapped with the new one in one atomic exchange where
the system has one, and deleted only once the new one is in place. Light on imports: ``hub
pull`` uses it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from schemas.errors import OutputExists


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
    with contextlib.suppress(OSError):
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def staged_folder(target: Path, *, force: bool) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``target`` (``replace_folder``).

    Example:
        >>> with staged_folder(Path("out/merged"), force=False) as tmp:   # doctest: +SKIP
        ...     (tmp / "config.json").write_text("{}")
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.hub-{uuid.uuid4().hex[:8]}.incomplete"
    staging.mkdir()
    try:
        yield staging
        check_output(target, force=force)  # someone may have created it meanwhile
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
