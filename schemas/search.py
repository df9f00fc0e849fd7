"""Bounds of a search (``hub ls``, ``GET /api/hub/v1/adapters``), shared by the local CLI and
the server so both refuse the same input with the same message.

Example:
    >>> parse_rank("8..16"), parse_rank("<16")
    ((8, 16), (None, 15))
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

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


FIELD_OPERATORS = ("!=", ">=", "<=", ">", "<", "=")
_FIELD = re.compile(
    r"(?P<field>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*"
    r"(?P<op>!=|>=|<=|>|<|=)\s*(?P<value>.+)"
)
_TOP_LEVEL = frozenset(
    {
        "library", "base_model", "base_revision", "method", "variant", "rank", "alpha",
        "target_modules", "task_type", "tasks", "params_trained", "params_stored",
        "params_changed_when_merged", "params_extra_at_inference", "params_base",
        "params_fraction", "params_trained_fraction", "params_stored_fraction",
        "params_changed_when_merged_fraction", "params_extra_at_inference_fraction",
        "size_bytes", "dtypes", "version", "repo", "parent", "inference_overhead",
    }
)  # fmt: skip
"""Card fields named as they are; any other name is a key of the card's ``details`` (where
method-specific facts live: AdapterHub's ``reduction_factor``, ``placement``...)."""


@dataclass(frozen=True)
class FieldCondition:
    """One ``--where FIELD OP VALUE`` condition on a card field (``metric:...`` conditions are
    ``schemas.metrics.MetricCondition``).

    ``FIELD`` is a card field (``rank``, ``variant``, ``inference_overhead.extra_layers``) or a
    key of ``details`` (``reduction_factor``, ``placement``, or spelled ``details.placement``).
    ``VALUE`` is a number when it reads as one, else text. On a list field (``placement``,
    ``target_modules``) ``=`` means "contains" and ``!=`` "does not contain".
    """

    path: str
    """The JSON path into the stored card, ``$.details.reduction_factor``."""
    op: str
    value: float | str

    @classmethod
    def parse(cls, spec: str) -> FieldCondition:
        """Parse ``FIELD OP VALUE``.

        Example:
            >>> FieldCondition.parse("reduction_factor>=8")
            FieldCondition(path='$.details.reduction_factor', op='>=', value=8.0)
            >>> FieldCondition.parse("placement=after_ffn").value
            'after_ffn'
        """
        match = _FIELD.fullmatch(spec.strip())
        if match is None or not match["value"].strip():
            raise InvalidArgument(
                f"invalid --where {spec!r}: expected FIELD OP VALUE (a card field such as"
                " variant or rank, or a details key such as reduction_factor or placement) or"
                " metric:NAME[@DATASET]OP VALUE, with OP one of "
                + ", ".join(FIELD_OPERATORS)
                + ", e.g. 'reduction_factor>=8'"
            )
        field, op, text = match["field"], match["op"], match["value"].strip()
        head = field.split(".", 1)[0]
        path = f"$.{field}" if head in _TOP_LEVEL or head == "details" else f"$.details.{field}"
        value: float | str
        try:
            value = float(text)
        except ValueError:
            value = text
        else:
            if not math.isfinite(value):
                value = text
        if isinstance(value, str) and op not in ("=", "!="):
            raise InvalidArgument(
                f"invalid --where {spec!r}: {op} compares numbers, and {text!r} is not one"
                " (text compares with = or !=)"
            )
        return cls(path, op, value)
