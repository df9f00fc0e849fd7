"""compose.merge against fp64 reference math, PEFT's merge_utils, and the laws the math obeys."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft.utils import merge_utils

from compose import merge
from compose.merge import Factors
from schemas import IncompatibleAdapters, InvalidRecipe

pytestmark = pytest.mark.numerics


def _lora(d, k, r, seed):
    g = torch.Generator().manual_seed(seed)
    return Factors(A=torch.randn(r, k, generator=g), B=torch.randn(d, r, generator=g))


def _exact(factors, weights):
    return sum(w * f.B.double() @ f.A.double() for f, w in zip(factors, weights, strict=True))


def _truncate(delta, rank):
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank], s


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_cat_is_exact_across_ranks():
    factors = [_lora(48, 40, 2, 1), _lora(48, 40, 4, 2), _lora(48, 40, 8, 3)]
    weights = [0.5, -1.25, 2.0]
    merged = merge.cat(factors, weights)
    assert merged.rank == 14
    assert _rel(merged.delta(), _exact(factors, weights)) < 1e-6


def test_svd_merge_equals_dense_truncated_svd():
    factors = [_lora(96, 64, 16, 1), _lora(96, 64, 8, 2)]
    weights = [0.7, 0.3]
    result = merge.svd_merge(factors, weights, 10)
    reference, s = _truncate(_exact(factors, weights), 10)
    assert result.factors.rank == 10
    assert _rel(result.factors.delta(), reference) < 1e-5
    assert result.energy == pytest.approx(float((s[:10] ** 2).sum() / (s**2).sum()), rel=1e-9)


def test_svd_merge_pads_when_the_delta_has_lower_rank():
    result = merge.svd_merge([_lora(32, 32, 2, 1)], [1.0], 6)
    assert result.factors.A.shape == (6, 32) and result.factors.B.shape == (32, 6)
    assert result.energy == pytest.approx(1.0)


def _stack_peer(deltas, weights):
    return [d.clone() for d in deltas], torch.tensor(weights)


def test_ties_and_pruning_equal_peft_merge_utils():
    deltas = [torch.randn(24, 20, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3)]
    weights = [0.6, 0.3, 0.9]
    for density in (1.0, 0.5, 0.2):
        for sign in ("total", "frequency"):
            ours = merge.ties(deltas, weights, density, sign)
            peer = merge_utils.ties(*_stack_peer(deltas, weights), density, sign)
            assert torch.allclose(ours, peer, atol=1e-6), (density, sign)
        ours = merge.magnitude_prune(deltas, weights, density)
        peer = merge_utils.magnitude_prune(*_stack_peer(deltas, weights), density)
        assert torch.allclose(ours, peer, atol=1e-6)
    assert torch.allclose(
        merge.task_arithmetic(deltas, weights),
        merge_utils.task_arithmetic(*_stack_peer(deltas, weights)),
        atol=1e-6,
    )


def test_dare_matches_peft_in_expectation_and_is_reproducible():
    delta = torch.randn(200, 200, generator=torch.Generator().manual_seed(0))
    one = merge.dare([delta], [1.0], 0.3, torch.Generator().manual_seed(5))
    two = merge.dare([delta], [1.0], 0.3, torch.Generator().manual_seed(5))
    # Elementwise only (a seeded mask, a product, a division, no sum whose order a kernel
    # picks): the same seed gives the same bits on any CPU.
    assert torch.equal(one, two)
    kept = one != 0
    assert kept.float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert torch.allclose(one[kept], delta[kept] / 0.3, atol=1e-5)  # rescaled like PEFT
    torch.manual_seed(0)
    peer = merge_utils.dare_linear([delta], torch.tensor([1.0]), 0.3)
    assert (peer != 0).float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert torch.allclose(peer[peer != 0], delta[peer != 0] / 0.3, atol=1e-5)


def test_dare_ties_elects_signs_like_peft_on_the_same_drops():
    deltas = [torch.randn(30, 30, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    ours = merge.dare(deltas, [1.0, 0.5], 1.0, torch.Generator(), variant="ties")
    peer = merge_utils.ties([d.clone() for d in deltas], torch.tensor([1.0, 0.5]), 1.0)
    assert torch.allclose(ours, peer, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: merge.svd_merge([_lora(8, 6, 2, 1)], [1.0], 0, module="m"),
            "rank must be a positive integer, got 0",
        ),
        (
            lambda: merge.svd_merge([_lora(8, 6, 2, 1)], [1.0], 7, module="m"),
            "rank 7 exceeds the full rank 6 of module 'm' (8x6)",
        ),
        (lambda: merge.ties([torch.ones(2, 2)], [1.0], 0.0), "density must be in (0, 1], got 0.0"),
        (
            lambda: merge.magnitude_prune([torch.ones(2, 2)], [1.0], 1.5),
            "density must be in (0, 1], got 1.5",
        ),
        (
            lambda: merge.cat([_lora(8, 6, 2, 1)], [1.0, 2.0]),
            "2 weights for 1 inputs (give one weight per input)",
        ),
    ],
)
def test_bad_parameters(call, message):
    with pytest.raises(InvalidRecipe) as info:
        call()
    assert str(info.value) == message


def test_mismatched_shapes_name_module_and_adapter():
    with pytest.raises(IncompatibleAdapters) as info:
        merge.check_same_shapes([(8, 6), (8, 7)], "model.layers.0.q_proj", ["t/a@1", "t/b@2"])
    assert str(info.value) == (
        "module 'model.layers.0.q_proj' is (8, 6) in t/a@1 but (8, 7) in t/b@2: the adapters"
        " were trained on different base shapes"
    )


# -- laws ----------------------------------------------------------------------------------

_weights = st.floats(min_value=-3, max_value=3, allow_nan=False).filter(lambda w: abs(w) > 1e-3)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), _weights, _weights, st.integers(0, 10_000))
def test_cat_is_linear(r1, r2, w1, w2, seed):
    a, b = _lora(12, 10, r1, seed), _lora(12, 10, r2, seed + 1)
    merged = merge.cat([a, b], [w1, w2]).delta().double()
    expected = w1 * a.delta().double() + w2 * b.delta().double()
    assert torch.allclose(merged, expected, atol=1e-4 * (1 + expected.abs().max().item()))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 8), st.integers(0, 10_000))
def test_svd_merge_is_eckart_young_optimal(r1, r2, rank, seed):
    a, b = _lora(16, 12, r1, seed), _lora(16, 12, r2, seed + 1)
    exact = _exact([a, b], [1.0, 0.5])
    result = merge.svd_merge([a, b], [1.0, 0.5], rank)
    error = (result.factors.delta().double() - exact).norm()
    s = torch.linalg.svdvals(exact)
    optimum = s[rank:].pow(2).sum().sqrt()
    assert float(error) == pytest.approx(float(optimum), abs=1e-4 * (1 + float(s[0])))
    # No other rank-R candidate does better, e.g. a random projection of the exact delta.
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(16, rank, generator=g, dtype=torch.float64))
    assert float(error) <= float((q @ q.T @ exact - exact).norm()) + 1e-6


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(0, 10_000))
def test_merging_one_adapter_with_weight_one_is_idempotent(rank, seed):
    a = _lora(14, 11, rank, seed)
    result = merge.svd_merge([a], [1.0], rank)
    assert _rel(result.factors.delta(), a.delta()) < 1e-5
    assert result.energy == pytest.approx(1.0)
    assert _rel(merge.cat([a], [1.0]).delta(), a.delta()) < 1e-7
    twice = merge.svd_merge([result.factors], [1.0], rank)
    assert _rel(twice.factors.delta(), result.factors.delta()) < 1e-5
