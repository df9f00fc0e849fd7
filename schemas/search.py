"""Bounds of a search (``hub ls``, ``GET /api/hub/v1/adapters``), shared by the local CLI and
the server so both refuse the same input with the same message.

Example:
    >>> parse_rank("8..16"), parse_rank("<16")
    ((8, 16), (None, 15))
"""

from __future__ import annotations

import re

from schemas.errors import InvalidArgument

MAX_RANK = 1_000_000
"""No adapter has a rank (or number of virtual tokens) anywhere near this; larger bounds are
refused rather than sent to SQLite, whose integers stop at 2**63."""
MAX_LIMIT = 100_000
"""The most results one search returns."""

_RANK_RANGE = re.compile(r"(\d*)\.\.(\d*)")
_RANK_CMP = re.compile(r"(<=|>=|<|>|==|=)?(\d+)")


def _bound(spec: str, digits: str) -> int:
    number = int(digits)
    if number > MAX_RANK:
        raise InvalidArgument(
            f"invalid --rank {spec!r}: {digits} is over {MAX_RANK}, more than any adapter's rank"
        )
    return number


def parse_rank(spec: str) -> tuple[int | None, int | None]:
    """``"8"``, ``"8..16"``, ``"..16"``, ``"<=16"``, ``">8"`` -> inclusive (low, high) bounds.

    Raises:
        InvalidArgument: malformed, empty, inverted, or a bound over ``MAX_RANK``.
    """
    text = spec.replace(" ", "")
    if len(text) > 100:
        raise InvalidArgument(f"invalid --rank {spec[:20]!r}...: too long")
    if match := _RANK_RANGE.fullmatch(text):
        low, high = (_bound(spec, g) if g else None for g in match.groups())
        if low is None and high is None:
            raise InvalidArgument(f"invalid --rank {spec!r}: give at least one bound, e.g. 8..16")
        if low is not None and high is not None and low > high:
            raise InvalidArgument(f"invalid --rank {spec!r}: the lower bound exceeds the upper")
        return low, high
    if match := _RANK_CMP.fullmatch(text):
        op, number = match.group(1) or "=", _bound(spec, match.group(2))
        return {
            "=": (number, number),
            "==": (number, number),
            "<=": (None, number),
            "<": (None, number - 1),
            ">=": (number, None),
            ">": (number + 1, None),
        }[op]
    raise InvalidArgument(
        f"invalid --rank {spec!r}: use N, LOW..HIGH, <=N, <N, >=N or >N (e.g. 8..16)"
    )


def check_limit(limit: int) -> int:
    """``limit`` if it is within 0..``MAX_LIMIT``.

    Raises:
        InvalidArgument: naming the bounds.
    """
    if not 0 <= limit <= MAX_LIMIT:
        raise InvalidArgument(
            f"invalid --limit {limit}: must be between 0 and {MAX_LIMIT}"
            " (leave it out for every result)"
        )
    return limit
