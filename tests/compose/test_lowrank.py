"""compose.lowrank against the exact (fp64 LAPACK) truncated SVD, over spectra built to be hard
for a randomized range finder: noise floors, slow decay, clusters at the cut, TIES results."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compose import merge
from compose.lowrank import TOLERANCE, exact_svd, rank_for_energy, truncated_svd

pytestmark = pytest.mark.numerics


def _orthonormal(n, m, generator):
    return torch.linalg.qr(torch.randn(n, m, generator=generator, dtype=torch.float64)).Q


def _with_spectrum(d, k, sigma, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    n = sigma.shape[0]
    return ((_orthonormal(d, n, g) * sigma) @ _orthonormal(k, n, g).T).to(dtype)


def _truncated(matrix, rank):
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def _relative_error(result, matrix):
    approx = (result.u.double() * result.s) @ result.vh.double()
    exact = _truncated(matrix, result.rank)
    return float((approx - exact).norm() / exact.norm())


def _ties_delta(d, k, r, density, seed):
    g = torch.Generator().manual_seed(seed)
    deltas = [
        torch.randn(d, r, generator=g) @ torch.randn(r, k, generator=g) * 0.01 for _ in range(2)
    ]
    return merge.ties(deltas, [1.0, 1.0], density)


spectra = st.sampled_from(["floor", "geometric", "ties", "step"])


@settings(max_examples=30, deadline=None)
@given(
    kind=spectra,
    d=st.integers(96, 200),
    k=st.integers(96, 200),
    rank=st.integers(1, 12),
    rate=st.floats(0.5, 0.999),
    floor=st.floats(1e-4, 0.5),
    seed=st.integers(0, 10_000),
)
def test_randomized_is_within_the_bound_of_the_exact_truncated_svd(
    kind, d, k, rank, rate, floor, seed
):
    n = min(d, k)
    index = torch.arange(n, dtype=torch.float64)
    if kind == "floor":  # a strong part of random size, then a noise floor
        strong = rank + seed % (2 * rank + 1)
        sigma = torch.where(index < strong, 1.0 + rate * (strong - index), floor)
    elif kind == "geometric":
        sigma = rate**index
    elif kind == "step":  # a cluster that straddles the cut: the gap is fp32 rounding
        sigma = torch.where(index < rank + 3, 1.0, floor * rate**index)
    if kind == "ties":
        matrix = _ties_delta(d, k, max(rank, 2), 0.05 + floor, seed)
    else:
        matrix = _with_spectrum(d, k, sigma, seed)
    result = truncated_svd(matrix, rank)
    assert result.rank == rank
    assert _relative_error(result, matrix) <= TOLERANCE
    assert result.total == pytest.approx(float(matrix.double().pow(2).sum()), rel=1e-9)
    if result.method == "randomized":
        assert result.estimate <= TOLERANCE


def test_the_fast_path_is_taken_where_the_spectrum_allows_it():
    # Two rank-16 LoRAs, TIES at density 0.2: the case the issue measured. The 16th and 17th
    # singular values are within 1% of each other, so this needs fp64 passes, yet no full SVD.
    matrix = _ties_delta(640, 512, 16, 0.2, 3)
    result = truncated_svd(matrix, 16)
    assert result.method == "randomized"
    assert result.estimate <= TOLERANCE
    assert _relative_error(result, matrix) <= TOLERANCE
    assert result.u.dtype == torch.float32 and result.u.shape == (640, 16)
    assert result.vh.shape == (16, 512)


def test_no_gap_falls_back_to_the_exact_svd():
    sigma = torch.cat([torch.ones(10, dtype=torch.float64), torch.full((190,), 1e-3)])
    matrix = _with_spectrum(200, 200, sigma, 1, torch.float64)
    result = truncated_svd(matrix, 5)  # the cut lies inside a cluster of ten equal values
    assert result.method == "exact"
    assert result.estimate == 0.0


@settings(max_examples=30, deadline=None)
@given(
    energy=st.floats(0.3, 0.99),
    rate=st.floats(0.6, 0.95),
    seed=st.integers(0, 10_000),
)
def test_rank_by_energy_is_the_smallest_that_keeps_it(energy, rate, seed):
    sigma = rate ** torch.arange(150, dtype=torch.float64)
    matrix = _with_spectrum(180, 150, sigma, seed)
    result = truncated_svd(matrix, energy=energy)
    s = torch.linalg.svdvals(matrix.double())
    fraction = torch.cumsum(s**2, 0) / (s**2).sum()
    expected = int(torch.nonzero(fraction >= energy * (1 - 1e-12))[0]) + 1
    assert result.rank == expected
    assert result.retained / result.total >= energy * (1 - 1e-9)
    assert _relative_error(result, matrix) <= TOLERANCE


def test_rank_for_energy_edges():
    s = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    assert rank_for_energy(s, 14.0, 9 / 14) == 1
    assert rank_for_energy(s, 14.0, 13 / 14) == 2
    assert rank_for_energy(s, 14.0, 1.0) == 3
    assert rank_for_energy(s, 0.0, 0.5) == 1
    assert rank_for_energy(s, 100.0, 0.5) == 3  # the values given do not reach it


def test_exact_method_is_lapack_in_fp64():
    matrix = _with_spectrum(50, 40, torch.linspace(2, 0.1, 40, dtype=torch.float64), 0)
    result = truncated_svd(matrix, 6, method="exact")
    reference = exact_svd(matrix, 6, None)
    assert result.method == "exact"
    torch.testing.assert_close(result.s, reference.s, rtol=1e-12, atol=0)


def test_factor_uses_the_checked_path_and_records_it():
    matrix = _ties_delta(400, 300, 8, 0.3, 5)
    fast = merge.factor(matrix, 8)
    exact = merge.factor(matrix, 8, method="exact")
    assert fast.method == "randomized" and exact.method == "exact"
    rel = (fast.factors.delta().double() - exact.factors.delta().double()).norm()
    assert float(rel / exact.factors.delta().double().norm()) <= TOLERANCE
    assert fast.energy == pytest.approx(exact.energy, rel=1e-6)
    auto = merge.factor(matrix, None, energy=0.9)
    assert auto.energy >= 0.9
    shorter = merge.factor(matrix, auto.factors.rank - 1, method="exact")
    assert shorter.energy < 0.9  # the smallest such rank


def test_keep_largest_keeps_exactly_k_with_ties_in_index_order():
    delta = torch.tensor([[1.0, -3.0, 2.0], [2.0, -2.0, 0.5]])
    kept = merge.keep_largest(delta, 0.5)  # k = 3: -3, then two of the three 2s by index
    torch.testing.assert_close(kept, torch.tensor([[0.0, -3.0, 2.0], [2.0, 0.0, 0.0]]))
    assert int((merge.keep_largest(torch.ones(4, 5), 0.35) != 0).sum()) == 7
    assert int((merge.keep_largest(torch.ones(4, 5), 0.01) != 0).sum()) == 0


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.sampled_from([0.0, 1e-30, 1e-8, 0.5, 0.5, 1.0, 3.0, 3.0, 1e30]) | st.floats(0, 1e6),
        min_size=1,
        max_size=200,
    ),
    fraction=st.floats(0.0, 1.0),
    double=st.booleans(),
)
def test_kth_largest_by_bits_is_kthvalue(values, fraction, double):
    """The GPU path's bisection over bit patterns gives exactly ``kthvalue``'s value, ties,
    zeros and subnormal-scale values included (run here on the CPU)."""
    from compose.merge import kth_largest_by_bits

    magnitude = torch.tensor(values, dtype=torch.float64 if double else torch.float32)
    k = max(1, round(fraction * magnitude.numel()))
    expected = torch.kthvalue(magnitude, magnitude.numel() - k + 1).values
    assert kth_largest_by_bits(magnitude, k).item() == expected.item()


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.sampled_from([0.0, 1e-30, 0.5, 0.5, 1.0, 3.0, 3.0]) | st.floats(0, 1e6),
        min_size=1,
        max_size=40,
    ),
    repeat=st.integers(1, 30),
    fraction=st.floats(0.0, 1.0),
    sample=st.sampled_from([1, 4, 16]),
    double=st.booleans(),
)
def test_kth_largest_by_sample_is_kthvalue(values, repeat, fraction, sample, double):
    """The GPU path's sampled bracket gives exactly ``kthvalue``'s value whatever the draw:
    heavy ties, brackets that miss (tiny samples) and the direct path for small inputs (run
    here on the CPU)."""
    from compose.merge import kth_largest_by_sample

    generator = torch.Generator().manual_seed(len(values) * 31 + repeat)
    base = torch.tensor(values * repeat, dtype=torch.float64 if double else torch.float32)
    magnitude = base[torch.randperm(base.numel(), generator=generator)]
    k = max(1, round(fraction * magnitude.numel()))
    expected = torch.kthvalue(magnitude, magnitude.numel() - k + 1).values
    assert kth_largest_by_sample(magnitude, k, sample=sample).item() == expected.item()


def test_kth_largest_by_sample_takes_the_bracket_on_a_large_input():
    """On an input 8x larger than the sample the bracket path answers (not the fallback):
    the k-th largest of 1M normal magnitudes, at TIES' density 0.2 and at the extremes."""
    from compose.merge import kth_largest_by_sample

    magnitude = torch.randn(1 << 20, generator=torch.Generator().manual_seed(3)).abs()
    for k in (1, 2, 1 << 18, (1 << 20) - 1, 1 << 20):
        expected = torch.kthvalue(magnitude, magnitude.numel() - k + 1).values
        assert kth_largest_by_sample(magnitude, k, sample=1 << 12).item() == expected.item()


@pytest.mark.parametrize("columns", [8, 24, 48, 0])
def test_a_start_seeds_the_sample_and_the_bound_still_holds(columns):
    """The inputs' B factors as the first sample (fewer columns than the sample: completed by
    drawn ones; more: mixed down; repeated columns; none of the range: a poor start) change the
    passes, never the bound."""
    g = torch.Generator().manual_seed(7)
    factors = [merge.Factors(A=torch.randn(12, 500, generator=g) * 0.01,
                             B=torch.randn(640, 12, generator=g)) for _ in range(4)]  # fmt: skip
    matrix = merge.ties([f.delta() for f in factors], [1.0] * 4, 0.2)
    plain = truncated_svd(matrix, 12)
    if columns:
        start = torch.cat([f.B for f in factors], dim=1)[:, :columns]
    else:  # the same column twice and a direction outside the range
        start = torch.cat([factors[0].B[:, :1], factors[0].B[:, :1], torch.ones(640, 1)], dim=1)
    result = truncated_svd(matrix, 12, start=start)
    assert result.method == "randomized" and result.estimate <= TOLERANCE
    assert _relative_error(result, matrix) <= TOLERANCE
    if columns == 48:  # all four inputs' column spaces: a better start than a random one
        assert result.passes < plain.passes
