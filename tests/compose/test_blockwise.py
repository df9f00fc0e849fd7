"""compose.blockwise against the whole-matrix merge math it replaces (compose.merge on the
inputs' dense deltas): equal bits, whatever the block size, the sample or the ties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compose import blockwise, merge
from compose.lowrank import _times, _times_transposed, squared_norm
from compose.merge import Factors
from schemas import InvalidRecipe

pytestmark = pytest.mark.numerics


def _factors(d, k, rank, seed, integers=False):
    g = torch.Generator().manual_seed(seed)
    if integers:  # small integers: products with many equal magnitudes (ties at a threshold)
        return Factors(A=torch.randint(-2, 3, (rank, k), generator=g).float(),
                       B=torch.randint(-2, 3, (d, rank), generator=g).float())  # fmt: skip
    return Factors(A=torch.randn(rank, k, generator=g) * 0.1, B=torch.randn(d, rank, generator=g))


def _deltas(factors, block_values=None):
    """Each input's dense delta from the row blocks the blockwise merge forms: the same fp64
    products of the same shapes, so the same bits on any BLAS. (One product of the whole
    matrix may round a last fp64 bit differently on another CPU's kernels, and then, rarely,
    an fp32 value: a test of the fused merge's logic must not depend on that.)"""
    d, k = int(factors[0].B.shape[0]), int(factors[0].A.shape[1])
    rows = blockwise.rows_per_block(d, k, factors[0].A.device, block_values)
    return [
        torch.cat(
            [blockwise.product(Factors(A=f.A, B=f.B[s : s + rows])) for s in range(0, d, rows)]
        )
        for f in factors
    ]


def _dense_ties(factors, weights, density, sign="total", block_values=None):
    return merge.ties(_deltas(factors, block_values), weights, density, sign)


def _bits(values):
    """The values' bit patterns: equal bits, the signs of zeros included."""
    return values.view(torch.int32).tolist()


def _dense_prune(factors, weights, density, block_values=None):
    return merge.magnitude_prune(_deltas(factors, block_values), weights, density)


@settings(max_examples=120, deadline=None)
@given(
    d=st.integers(1, 40),
    k=st.integers(1, 40),
    ranks=st.lists(st.integers(0, 4), min_size=1, max_size=4),
    integers=st.booleans(),
    weights_seed=st.integers(0, 3),
    density=st.sampled_from([0.01, 0.1, 0.2, 0.5, 0.9, 1.0]) | st.floats(0.001, 1.0),
    sign=st.sampled_from(["total", "frequency"]),
    rows=st.integers(1, 41),
    sample=st.sampled_from([1, 4, 16, 1 << 18]),
    seed=st.integers(0, 10_000),
)
def test_ties_and_pruning_equal_the_dense_path(
    d, k, ranks, integers, weights_seed, density, sign, rows, sample, seed
):
    """Blocks of any number of rows (remainders, one row, one block), samples that bracket,
    miss (one value) or exceed the input (the direct path), inputs of rank 0 (a module an
    adapter lacks) and heavy ties: the bits of ``merge.ties`` / ``merge.magnitude_prune``."""
    factors = [_factors(d, k, r, seed + i, integers) for i, r in enumerate(ranks)]
    weights = [[1.0] * 4, [0.7, 1.3, -0.4, 2.0], [0.5] * 4, [2.0, 1.0, 1.0, 0.25]][weights_seed]
    weights = weights[: len(factors)]
    options = {"block_values": rows * k, "sample": sample}
    got = blockwise.ties(factors, weights, density, sign, **options)
    assert got.dtype == torch.float32 and got.shape == (d, k)
    assert _bits(got) == _bits(_dense_ties(factors, weights, density, sign, rows * k))
    pruned = blockwise.magnitude_prune(factors, weights, density, **options)
    assert _bits(pruned) == _bits(_dense_prune(factors, weights, density, rows * k))


def test_the_bracket_path_on_a_module_sized_input():
    """Inputs over eight samples take the sampled bracket (default sample, 2.4M values) and
    blocks of the default size: the dense path's values, bit for bit."""
    factors = [_factors(1200, 2000, 16, s) for s in (1, 2)]
    got = blockwise.ties(factors, [1.0, 1.0], 0.2)
    expected = _dense_ties(factors, [1.0, 1.0], 0.2)
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))
    assert int((got != 0).sum()) > 0.2 * got.numel()  # the disjoint union of two trims


def test_ties_at_the_threshold_are_kept_in_index_order_across_blocks():
    # Every magnitude is 1 or 2: of the 2s the first ones in index order are kept, and the
    # blocks of 3 rows cut through the run of ties.
    a = Factors(
        A=torch.ones(1, 4), B=torch.tensor([[1.0], [2.0], [-2.0], [1.0], [2.0], [1.0], [-1.0]])
    )
    b = Factors(
        A=torch.ones(1, 4), B=torch.tensor([[2.0], [1.0], [1.0], [-2.0], [1.0], [1.0], [2.0]])
    )
    for density in (0.1, 0.3, 0.5, 0.6):
        for rows in (1, 2, 3, 7):
            got = blockwise.ties([a, b], [1.0, 1.0], density, block_values=rows * 4, sample=1)
            assert _bits(got) == _bits(_dense_ties([a, b], [1.0, 1.0], density)), (density, rows)


def test_tiny_shapes_and_edges():
    one = [Factors(A=torch.tensor([[2.0]]), B=torch.tensor([[-3.0]]))]
    assert torch.equal(blockwise.ties(one, [1.0], 1.0), torch.tensor([[-6.0]]))
    assert torch.equal(blockwise.ties(one, [1.0], 0.5), torch.zeros(1, 1))  # keeps int(0.5) = 0
    row, column = _factors(1, 9, 2, 1), _factors(9, 1, 2, 2)
    for f in (row, column):
        for density in (0.2, 1.0):
            assert torch.equal(blockwise.ties([f, f], [1.0, 2.0], density, block_values=1),
                               _dense_ties([f, f], [1.0, 2.0], density, 1))  # fmt: skip


def test_bad_parameters_are_refused_like_the_dense_path():
    f = _factors(4, 3, 2, 1)
    with pytest.raises(InvalidRecipe, match=r"density must be in \(0, 1\], got 1.5"):
        blockwise.ties([f, f], [1.0, 1.0], 1.5)
    with pytest.raises(InvalidRecipe, match="1 weights for 2 inputs"):
        blockwise.magnitude_prune([f, f], [1.0], 0.5, module="q_proj")


@pytest.mark.parametrize("shape", [(1, 1), (3, 2), (700, 400), (2, 200_000)])
def test_the_range_finders_blockwise_products_equal_the_whole_matrix(shape):
    """fp32 rows widened to fp64 one block at a time (700 rows: a block of 655 and one of 45;
    200,000 columns: blocks of one row) give the fp64 products and the fp64 squared norm."""
    g = torch.Generator().manual_seed(0)
    matrix = torch.randn(*shape, generator=g)
    left = torch.randn(shape[0], 5, generator=g, dtype=torch.float64)
    right = torch.randn(shape[1], 5, generator=g, dtype=torch.float64)
    wide = matrix.double()
    torch.testing.assert_close(_times(matrix, right), wide @ right, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        _times_transposed(matrix, left), wide.T @ left, rtol=1e-12, atol=1e-12
    )
    assert squared_norm(matrix) == pytest.approx(float((wide**2).sum()), rel=1e-13)
    # Same dtype: the plain products.
    torch.testing.assert_close(_times(wide, right), wide @ right, rtol=0, atol=0)
    assert torch.equal(_times_transposed(matrix, left.float()), (left.float().T @ matrix).T)
