"""One meaning for "the value of metric NAME on a version", and the ``--where`` filter syntax.

A version may hold the same metric several times: typed at push, logged by a Trainer, read from
a README's ``model-index``, added with ``hub metric add``, measured by ``hub eval`` (once per
dataset, and again on a re-run). ``AdapterCard.metric(NAME)``, ``hub ls --sort metric:NAME``
and ``hub ls --where 'metric:NAME>=X'`` all read the one value this rule picks:

1. only the metrics named NAME (and, with ``NAME@DATASET``, recorded on that dataset);
2. of those, the ones from the most trusted kind of source (``SOURCE_PRIORITY``): measured
   here (``hub-eval``, ``lm-eval``) before logged by the training run (``trainer``) before
   reported by a person (``model-index``, ``push``, ``manual``);
3. of those, the latest recorded (the last in the card's list, which only ever grows).

"Best first" for sorting uses that metric's own ``higher_is_better``; a metric that does not
say is judged by its name (``default_higher_is_better``: losses, perplexity and error rates
are lower-is-better). The index stores each metric's priority and position so SQL applies the
same rule (``hub.search``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from schemas.errors import InvalidArgument

SOURCE_PRIORITY: dict[str, int] = {
    "hub-eval": 0,
    "lm-eval": 0,
    "trainer": 1,
    "model-index": 2,
    "push": 2,
    "manual": 2,
}
"""Lower wins. A source not listed ranks with the reported ones."""
REPORTED = 2

_LOWER_IS_BETTER = re.compile(
    r"(^|_)(loss|cross_entropy|perplexity|ppl|wer|cer|ter|error|err|mse|mae|rmse|nll)(_|$)"
)


def source_priority(source: str | None) -> int:
    return SOURCE_PRIORITY.get(source or "push", REPORTED)


def default_higher_is_better(name: str) -> bool:
    """For a metric that does not say: False for losses, cross-entropy, perplexity, error
    rates (``eval_loss``, ``wer``, ``test_mse``), True otherwise.

    Example:
        >>> default_higher_is_better("eval_loss"), default_higher_is_better("exact_match")
        (False, True)
    """
    return _LOWER_IS_BETTER.search(name.lower()) is None


def split_name(spec: str) -> tuple[str, str | None]:
    """``"NAME@DATASET"`` -> (NAME, DATASET); ``"NAME"`` -> (NAME, None)."""
    name, at, dataset = spec.partition("@")
    return name.strip(), (dataset.strip() or None) if at else None


def pick(metrics: Sequence[Any], name: str, dataset: str | None = None) -> Any | None:
    """The metric the rule above picks from ``metrics`` (``Metric`` objects or dicts)."""

    def get(m: Any, key: str) -> Any:
        return m.get(key) if isinstance(m, dict) else getattr(m, key)

    best, best_priority = None, math.inf
    for m in metrics:  # oldest first: a later one of the same priority replaces the earlier
        if get(m, "name") != name or (dataset is not None and get(m, "dataset") != dataset):
            continue
        priority = source_priority(get(m, "source"))
        if priority <= best_priority:
            best, best_priority = m, priority
    return best


def higher_is_better_of(metric: Any) -> bool:
    """The metric's own ``higher_is_better``, else the name's default."""
    if isinstance(metric, dict):
        said, name = metric.get("higher_is_better"), str(metric["name"])
    else:
        said, name = metric.higher_is_better, str(metric.name)
    return bool(said) if said is not None else default_higher_is_better(name)


OPERATORS = (">=", "<=", ">", "<", "=")

_WHERE = re.compile(
    r"metric:(?P<name>[^<>=@]+)(?:@(?P<dataset>[^<>=]+))?"
    r"(?P<op>>=|<=|>|<|=)(?P<value>[^@]+)(?:@(?P<dataset2>.+))?"
)


@dataclass(frozen=True)
class MetricCondition:
    """One ``--where 'metric:NAME[@DATASET]>=X'`` condition."""

    name: str
    op: str
    value: float
    dataset: str | None = None

    @classmethod
    def parse(cls, spec: str) -> MetricCondition:
        """Parse ``metric:NAME[@DATASET]OP VALUE`` (OP: >=, <=, >, <, =); the dataset may also
        follow the value (``metric:exact_match>=0.7@spider``).

        Example:
            >>> MetricCondition.parse("metric:exact_match@spider>=0.7")
            MetricCondition(name='exact_match', op='>=', value=0.7, dataset='spider')
        """
        match = _WHERE.fullmatch(spec.strip())
        error = InvalidArgument(
            f"invalid --where {spec!r}: expected metric:NAME[@DATASET]OP VALUE with OP one of"
            " >=, <=, >, <, =, e.g. 'metric:exact_match@spider>=0.7'"
        )
        if match is None or (match["dataset"] and match["dataset2"]):
            raise error
        try:
            value = float(match["value"])
        except ValueError:
            raise error from None
        if not math.isfinite(value) or not match["name"].strip():
            raise error
        dataset = (match["dataset"] or match["dataset2"] or "").strip() or None
        return cls(match["name"].strip(), match["op"], value, dataset)
