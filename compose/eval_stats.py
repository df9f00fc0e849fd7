"""Statistics for evaluation: means with standard errors, seeded bootstrap intervals, paired
differences, and the tests that say which differences between adapters are real. No I/O.

Every function takes per-example scores (one float per example, e.g. 0/1 for exact match or a
log-likelihood) and returns plain floats. Bootstrap resampling uses numpy's PCG64 generator
seeded by the caller, so the same scores and seed give the same interval on every machine
(resampling and means involve no BLAS).

References:
- Efron & Tibshirani, *An Introduction to the Bootstrap* (1993): percentile intervals.
- Koehn, "Statistical Significance Tests for Machine Translation Evaluation" (EMNLP 2004):
  the paired bootstrap.
- McNemar (1947); the exact (binomial) form for paired binary outcomes.
- Holm, "A Simple Sequentially Rejective Multiple Test Procedure" (1979).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Floats = NDArray[np.float64]

DEFAULT_RESAMPLES = 2000


@dataclass(frozen=True)
class Estimate:
    """A mean over examples with its standard error and a 95% bootstrap interval."""

    value: float
    n: int
    stderr: float
    ci95: tuple[float, float]


def _array(scores: Sequence[float]) -> Floats:
    import numpy as np

    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("need at least one per-example score")
    if not np.isfinite(values).all():
        raise ValueError("per-example scores must be finite")
    return values


def stderr(scores: Sequence[float]) -> float:
    """Standard error of the mean: sample standard deviation (n - 1) over sqrt(n); 0 for n = 1."""
    return _stderr(_array(scores))


def _stderr(values: Floats) -> float:
    if values.size < 2:
        return 0.0
    return float(values.std(ddof=1) / math.sqrt(values.size))


def _bootstrap_means(values: Floats, resamples: int, seed: int) -> Floats:
    """Means of ``resamples`` resamples (with replacement) of ``values``, in chunks so memory
    stays at a few MB for any n."""
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(seed))
    n = values.size
    chunk = max(1, min(resamples, 4_000_000 // max(n, 1)))
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    return means


def _percentile_interval(means: Floats, level: float) -> tuple[float, float]:
    import numpy as np

    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def estimate(
    scores: Sequence[float], *, seed: int = 0, resamples: int = DEFAULT_RESAMPLES
) -> Estimate:
    """Mean, standard error and 95% percentile-bootstrap interval of per-example scores.

    Example:
        >>> e = estimate([1, 0, 1, 1], seed=0)
        >>> e.value, e.n
        (0.75, 4)
    """
    values = _array(scores)
    means = _bootstrap_means(values, resamples, seed)
    return Estimate(
        value=float(values.mean()),
        n=int(values.size),
        stderr=_stderr(values),
        ci95=_percentile_interval(means, 0.95),
    )


@dataclass(frozen=True)
class PairedDelta:
    """``mean(a_i - b_i)`` over shared examples, its interval, and a two-sided p-value."""

    value: float
    n: int
    stderr: float
    ci95: tuple[float, float]
    p_value: float


def paired_delta(
    a: Sequence[float],
    b: Sequence[float],
    *,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
) -> PairedDelta:
    """The paired difference of two systems scored on the same examples (``a_i`` and ``b_i``
    belong to example i): the bootstrap resamples examples, keeping each pair together.

    The p-value is the paired bootstrap's (Koehn 2004): the share of resampled mean
    differences on the far side of zero, doubled (two-sided), with the +1 correction so it is
    never exactly 0 (Davison & Hinkley 1997, eq. 4.11).
    """
    import numpy as np

    x, y = _array(a), _array(b)
    if x.size != y.size:
        raise ValueError(f"paired scores need the same examples ({x.size} vs {y.size})")
    diff = x - y
    means = _bootstrap_means(diff, resamples, seed)
    observed = float(diff.mean())
    if not np.any(diff != 0):
        p_value = 1.0
    else:
        beyond = int((means <= 0).sum()) if observed > 0 else int((means >= 0).sum())
        p_value = min(1.0, 2.0 * (beyond + 1) / (resamples + 1))
    return PairedDelta(
        value=observed,
        n=int(diff.size),
        stderr=_stderr(diff),
        ci95=_percentile_interval(means, 0.95),
        p_value=p_value,
    )


def paired_token_delta(
    a_sums: Sequence[float],
    b_sums: Sequence[float],
    tokens: Sequence[int],
    *,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
) -> PairedDelta:
    """The per-token paired difference of two systems over documents: ``sum(a - b) / sum(n)``
    where document i has ``tokens[i]`` tokens whose losses sum to ``a_sums[i]`` and
    ``b_sums[i]``. The bootstrap resamples whole documents (a cluster bootstrap: the tokens of
    one document are not independent draws), recomputing the ratio of sums each time.

    With every document of the same length this is ``paired_delta`` of the per-document means
    (same resamples, same interval). The standard error is the ratio estimator's (delta method).
    """
    import numpy as np

    x, y = _array(a_sums), _array(b_sums)
    n = np.asarray(tokens, dtype=np.float64)
    if not (x.size == y.size == n.size):
        raise ValueError(f"paired sums need the same documents ({x.size}, {y.size}, {n.size})")
    if (n <= 0).any():
        raise ValueError("every document needs at least one scored token")
    diff = x - y
    rng = np.random.Generator(np.random.PCG64(seed))
    size = diff.size
    chunk = max(1, min(resamples, 4_000_000 // max(size, 1)))
    ratios = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        idx = rng.integers(0, size, size=(stop - start, size))
        ratios[start:stop] = diff[idx].sum(axis=1) / n[idx].sum(axis=1)
    observed = float(diff.sum() / n.sum())
    if size < 2:
        err = 0.0
    else:  # delta method for a ratio of means: residuals d_i - r * n_i over mean(n)
        residual = diff - observed * n
        err = float(residual.std(ddof=1) / math.sqrt(size) / n.mean())
    if not np.any(diff != 0):
        p_value = 1.0
    else:
        beyond = int((ratios <= 0).sum()) if observed > 0 else int((ratios >= 0).sum())
        p_value = min(1.0, 2.0 * (beyond + 1) / (resamples + 1))
    return PairedDelta(
        value=observed,
        n=int(size),
        stderr=err,
        ci95=_percentile_interval(ratios, 0.95),
        p_value=p_value,
    )


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> float:
    """Exact two-sided McNemar p-value for paired binary outcomes (right/wrong per example).

    Only discordant pairs count: with ``n01`` examples only b got right and ``n10`` only a got
    right, under the null each discordant pair is a fair coin, so the p-value is
    ``min(1, 2 * P[Binomial(n01 + n10, 1/2) <= min(n01, n10)])``.
    """
    if len(a_correct) != len(b_correct):
        raise ValueError(
            f"paired outcomes need the same examples ({len(a_correct)} vs {len(b_correct)})"
        )
    n10 = sum(1 for x, y in zip(a_correct, b_correct, strict=True) if x and not y)
    n01 = sum(1 for x, y in zip(a_correct, b_correct, strict=True) if y and not x)
    n = n10 + n01
    if n == 0:
        return 1.0
    k = min(n10, n01)
    # Exact integer arithmetic: the tail is a sum of binomial coefficients over 2^n.
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2.0 * tail / 2**n)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input's order.

    Sorted ascending, the i-th smallest (0-based) is multiplied by ``m - i``, then a running
    maximum keeps the adjusted values monotone; each is capped at 1. Reject a hypothesis at
    level alpha when its adjusted value is <= alpha: this controls the family-wise error rate.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def is_binary(scores: Sequence[float]) -> bool:
    """True when every score is 0 or 1 (exact match, accuracy): McNemar applies."""
    return all(s in (0.0, 1.0) for s in scores)
