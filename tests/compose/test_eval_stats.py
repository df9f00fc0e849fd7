"""compose.eval_stats against closed forms: normal-theory intervals, exact binomial tails,
Holm's procedure worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compose import eval_stats


def test_estimate_of_a_bernoulli_sample_matches_the_normal_interval():
    """With n = 400 and p = 0.3 the bootstrap interval is the normal one within its own noise."""
    scores = [1.0] * 120 + [0.0] * 280
    est = eval_stats.estimate(scores, seed=3, resamples=4000)
    assert est.value == pytest.approx(0.3)
    assert est.n == 400
    # Sample sd (ddof=1) over sqrt(n) of a 0/1 sample: sqrt(p (1 - p) / (n - 1)) exactly.
    assert est.stderr == pytest.approx(math.sqrt(0.3 * 0.7 / 399), rel=1e-12)
    half = 1.959964 * math.sqrt(0.3 * 0.7 / 400)
    assert est.ci95[0] == pytest.approx(0.3 - half, abs=0.006)
    assert est.ci95[1] == pytest.approx(0.3 + half, abs=0.006)


def test_estimate_is_seeded_and_deterministic():
    scores = list(np.random.default_rng(0).normal(size=50))
    a = eval_stats.estimate(scores, seed=7)
    b = eval_stats.estimate(scores, seed=7)
    c = eval_stats.estimate(scores, seed=8)
    assert a == b
    assert a.ci95 != c.ci95
    assert a.ci95[0] < a.value < a.ci95[1]


def test_constant_scores_have_a_point_interval():
    est = eval_stats.estimate([0.5] * 10)
    assert (est.value, est.stderr, est.ci95) == (0.5, 0.0, (0.5, 0.5))


def test_paired_delta_sees_a_consistent_small_gain():
    """b is a plus noise, a is better by 0.05 on every example: unpaired intervals overlap,
    the paired one excludes 0."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=200)
    a, b = base + 0.05, base
    paired = eval_stats.paired_delta(a, b, seed=0)
    assert paired.value == pytest.approx(0.05)
    assert paired.ci95 == pytest.approx((0.05, 0.05))
    assert paired.p_value == pytest.approx(2 / 2001)
    ea, eb = eval_stats.estimate(a), eval_stats.estimate(b)
    assert ea.ci95[0] < eb.ci95[1]  # the unpaired intervals overlap


def test_paired_delta_of_identical_systems():
    scores = [0.0, 1.0, 1.0, 0.0]
    paired = eval_stats.paired_delta(scores, scores)
    assert (paired.value, paired.p_value, paired.ci95) == (0.0, 1.0, (0.0, 0.0))


def test_paired_delta_refuses_unpaired_lengths():
    with pytest.raises(ValueError) as err:
        eval_stats.paired_delta([1.0, 2.0], [1.0])
    assert str(err.value) == "paired scores need the same examples (2 vs 1)"


def test_mcnemar_exact_tail():
    # 10 discordant pairs, 8 favour a: P[Bin(10, .5) <= 2] = (1 + 10 + 45) / 1024, doubled.
    a = [True] * 8 + [False] * 2 + [True] * 5
    b = [False] * 8 + [True] * 2 + [True] * 5
    assert eval_stats.mcnemar(a, b) == pytest.approx(2 * 56 / 1024)
    assert eval_stats.mcnemar(a, a) == 1.0
    assert eval_stats.mcnemar([True], [False]) == 1.0  # one discordant pair: no evidence


def test_holm_by_hand():
    # Sorted: 0.01 (x3) = 0.03, 0.02 (x2) = 0.04, 0.04 (x1) = 0.04 (monotone max).
    assert eval_stats.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert eval_stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert eval_stats.holm([]) == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=12))
def test_holm_is_monotone_and_no_smaller_than_raw(p_values):
    adjusted = eval_stats.holm(p_values)
    assert all(adj >= raw - 1e-15 for adj, raw in zip(adjusted, p_values, strict=True))
    assert all(adj <= 1.0 for adj in adjusted)
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    ordered = [adjusted[i] for i in order]
    assert ordered == sorted(ordered)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=2, max_size=40), st.integers(0, 2**32 - 1))
def test_interval_lies_within_the_scores_range(scores, seed):
    est = eval_stats.estimate(scores, seed=seed, resamples=500)
    assert min(scores) - 1e-9 <= est.ci95[0] <= est.ci95[1] <= max(scores) + 1e-9


def test_non_finite_scores_are_refused():
    with pytest.raises(ValueError) as err:
        eval_stats.estimate([1.0, float("nan")])
    assert str(err.value) == "per-example scores must be finite"


def test_paired_token_delta_is_a_ratio_of_sums_resampled_by_document():
    rng = np.random.default_rng(5)
    tokens = [3, 10, 1, 7, 25, 4]
    a = list(rng.normal(3.0, 1.0, size=6) * tokens)
    b = list(rng.normal(3.2, 1.0, size=6) * tokens)
    d = eval_stats.paired_token_delta(a, b, tokens, seed=2)
    assert d.value == pytest.approx((sum(a) - sum(b)) / sum(tokens), rel=1e-12)
    assert d.n == 6 and d.ci95[0] <= d.value <= d.ci95[1]
    # Delta-method standard error of a ratio of means, by hand.
    r = d.value
    res = [(x - y) - r * n for x, y, n in zip(a, b, tokens, strict=True)]
    mean_res = sum(res) / 6
    sd = math.sqrt(sum((e - mean_res) ** 2 for e in res) / 5)
    assert d.stderr == pytest.approx(sd / math.sqrt(6) / (sum(tokens) / 6), rel=1e-9)


def test_paired_token_delta_with_equal_lengths_is_the_paired_delta_of_means():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=40), rng.normal(size=40)
    per_doc = eval_stats.paired_delta(list(a), list(b), seed=4)
    token = eval_stats.paired_token_delta(list(a * 5), list(b * 5), [5] * 40, seed=4)
    assert token.value == pytest.approx(per_doc.value, abs=1e-12)
    assert token.ci95 == pytest.approx(per_doc.ci95, abs=1e-12)  # the same resamples
    assert token.p_value == per_doc.p_value
    with pytest.raises(ValueError, match="at least one scored token"):
        eval_stats.paired_token_delta([1.0], [1.0], [0])
