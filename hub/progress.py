"""One progress-bar type for long work (push/pull of large files, export).

Bars go to stderr, appear only for work above ``min_bytes``, and are turned off by
``HUB_DISABLE_PROGRESS=1`` (read when a bar is made, not at import).
"""

from __future__ import annotations

import os
from typing import Any

LARGE_FILE_BYTES = 64 * 1024 * 1024


def progress_disabled() -> bool:
    return os.environ.get("HUB_DISABLE_PROGRESS", "").lower() in {"1", "true", "yes"}


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def byte_progress(description: str, total: int, *, min_bytes: int = LARGE_FILE_BYTES) -> Any:
    """A tqdm byte counter for ``total`` bytes, or a silent stand-in for small or quiet work."""
    if total < min_bytes or progress_disabled():
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024, leave=False
    )


def count_progress(description: str, total: int, *, unit: str = "it", min_total: int = 16) -> Any:
    """A tqdm counter of ``total`` items (sequences scored, steps), or a silent stand-in for
    small or quiet work."""
    if total < min_total or progress_disabled():
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit=unit, leave=False)
