"""Adapter folders on disk: which files a push stores, and reading small files safely.

The rule for what is stored (the README's "Reliability and security" section says the same):

- Hidden entries (any path part starting with ``.``: ``.git``, ``.ipynb_checkpoints``,
  ``.DS_Store``) and ``__pycache__`` are not part of an adapter, nor is a Trainer's training
  state (``checkpoint-N/``, ``optimizer.pt``...: ``hub.inspect.files``). Walking a local
  folder skips them; a client that names a hidden file explicitly (a server push, a Hugging
  Face commit) is refused (``refuse_ignored``), never silently dropped.
- Only regular files are stored. A symbolic link whose target lies inside the folder is stored
  as the bytes of its target (a linked folder as the files in it), so ``pull`` gives back
  regular files with exactly those bytes. A link that leaves the folder, a broken link, a link
  loop, a FIFO, a device or a socket is refused, naming the path: nothing is read through it.
- File names must be valid UTF-8: they are stored as text and served over HTTP.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from schemas.errors import InvalidAdapter, InvalidArgument

IGNORED_NAMES = frozenset({"__pycache__"})


def is_ignored(path: str) -> bool:
    """Whether ``path`` (relative, ``/``-separated) is left out of an adapter: hidden parts or
    ``__pycache__``."""
    return any(part.startswith(".") or part in IGNORED_NAMES for part in path.split("/"))


def refuse_ignored(path: str) -> str:
    """For paths a client names explicitly: refuse one that a push would not store.

    Raises:
        InvalidArgument: ``path`` is hidden or under ``__pycache__``.
    """
    if is_ignored(path):
        raise InvalidArgument(
            f"file {path!r} is hidden (or under __pycache__): hub never stores such files;"
            " leave it out of the upload"
        )
    return path


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def adapter_files(folder: Path, *, trusted: Sequence[Path] = ()) -> list[tuple[str, Path]]:
    """(relative posix path, path to read) of every file a push of ``folder`` stores, sorted.

    Args:
        folder: the adapter folder.
        trusted: folders that links may point into besides ``folder`` itself (the registry's
            own blob store: the server stages pushes as folders of links to stored blobs).

    Raises:
        InvalidAdapter: a link leaving the folder, a broken link, a link loop, a file that is
            not a regular file, or a name that is not UTF-8; the message names the path.
    """
    from hub.inspect.files import is_training_output

    root = Path(os.path.realpath(folder))
    roots = [Path(os.path.realpath(t)) for t in trusted]
    out: list[tuple[str, Path]] = []

    def walk(directory: Path, prefix: str, chain: frozenset[Path]) -> None:
        with os.scandir(directory) as entries:
            names = sorted(entry.name for entry in entries)
        for name in names:
            rel = f"{prefix}{name}"
            if is_ignored(name) or is_training_output(rel, folder):
                continue
            path = directory / name
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raw = os.fsencode(rel)
                raise InvalidAdapter(
                    f"{folder}: the file name {raw!r} is not valid UTF-8; rename it",
                    path=str(folder),
                ) from None
            real = Path(os.path.realpath(path))
            if path.is_symlink():
                if not real.exists():
                    raise InvalidAdapter(
                        f"{path} is a broken link (to {os.readlink(path)}); remove it or fix it",
                        path=str(path),
                    )
                if not _inside(real, root) and not (
                    real.is_file() and any(_inside(real, t) for t in roots)
                ):
                    raise InvalidAdapter(
                        f"{path} is a link to {real}, outside the adapter folder: hub stores"
                        " only what is inside it (copy the file in instead)",
                        path=str(path),
                    )
            mode = os.stat(path).st_mode
            if stat.S_ISDIR(mode):
                if is_training_output(f"{rel}/-", folder):  # checkpoint-N/, runs/: training state
                    continue
                if real in chain:
                    raise InvalidAdapter(
                        f"{path} is a link loop (it points at a folder that contains it)",
                        path=str(path),
                    )
                walk(path, f"{rel}/", chain | {real})
            elif stat.S_ISREG(mode):
                out.append((rel, path))
            else:
                raise InvalidAdapter(
                    f"{path} is not a regular file ({_kind(mode)}); hub stores only regular"
                    " files: remove it",
                    path=str(path),
                )

    walk(Path(folder), "", frozenset({root}))
    return sorted(out)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a file"


def read_regular(path: Path, limit: int) -> bytes | None:
    """The first ``limit`` bytes of ``path`` if it is a regular file, else None.

    Opened without blocking and checked after opening, so a FIFO, a device (``/dev/zero``) or a
    file swapped in meanwhile is never read from; the read is bounded, whatever the size.
    Returns None when the file does not exist or is not a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        left = limit
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_outside_registry(target: Path, home: Path, *, option: str = "-o") -> None:
    """Refuse an output folder that is, contains or is inside the registry folder ``home``:
    replacing it would replace the registry.

    Raises:
        InvalidArgument: naming both folders.
    """
    out, registry = Path(os.path.realpath(target)), Path(os.path.realpath(home))
    if _inside(out, registry) or _inside(registry, out):
        raise InvalidArgument(
            f"{option} {target}: the output folder would overlap the registry folder {home}"
            " (it is, contains or is inside it); choose a folder outside the registry"
        )
