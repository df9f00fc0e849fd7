"""TIES and magnitude pruning of LoRA inputs, one block of rows at a time. Pure math on tensors.

``compose.merge.ties`` takes each input's dense delta: N matrices of d x k values, then a
magnitude, a mask, a stack, a vote, an agreement mask... each a full-size temporary that
streams memory (and, freshly allocated, faults its pages in). Here the inputs stay factored
(``delta_i = B_i A_i``, rank r) and only the output is d x k:

1. **Threshold** (per input, the k-th largest magnitude, ``merge.keep_largest``'s): a sample of
   values computed from the factors (``sum_r B[i, r] A[r, j]`` at random (i, j), as
   ``merge.kth_largest_by_sample`` draws them) brackets it; one pass over blocks of rows forms
   each block's ``B_i[rows] @ A_i``, counts the values above the bracket and keeps those inside
   (about 1%); the k-th largest is then selected among the kept values. A draw that misses
   (about 1e-9), or an input of under eight samples, falls back to ``merge.kth_largest`` on that
   input's whole magnitude.
2. **Merge**: a second pass forms each block's products again, trims them with the thresholds
   (ties at the threshold kept in index order, as ``keep_largest`` keeps them), elects signs
   and takes the disjoint mean with ``merge._elect_and_merge``'s steps, into the block's rows
   of the output.

A block's product is formed by the same fp64 matrix product as the dense delta
(``(B.double() @ A.double()).float()``, ``compose.operators``), of fewer rows: a rank-r product
sums the same r terms per value whatever the rows, so the values, and with them the result, are
the dense path's wherever the BLAS sums those terms in one order for any row count (it does on
the machines measured). The tests compare, bit for bit, against the dense merge of deltas built
over the same row blocks (``rows_per_block``), which holds on any BLAS: a whole-matrix product
may round a last fp64 bit differently on another CPU's kernels and, rarely, an fp32 value.
Everything runs on the inputs' device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compose.lowrank import block_rows
from compose.merge import (
    _SAMPLE,
    Factors,
    MajoritySign,
    _check_density,
    _check_weights,
    _kth_largest_directly,
)

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class _Trim:
    """How one input is trimmed: keep magnitudes above ``threshold``, and of those equal to it
    the first ``ties`` in index order (``None``: all of them, which is the same)."""

    threshold: float
    ties: int | None
    keep_all: bool = False
    keep_none: bool = False


def product(f: Factors) -> Tensor:
    """One input's dense delta as the dense operators compute it: fp64 product, fp32 values."""
    return (f.B.double() @ f.A.double()).float()


def rows_per_block(d: int, k: int, device: torch.device, block_values: int | None) -> int:
    """Rows of each block of a d x k merge (``lowrank.block_rows``'s rule, capped so that a
    block holds at most 2^24 values: counts are sums of fp32 0/1 masks, exact up to there).
    Each input's products are formed over these same row ranges."""
    return min(block_rows(d, k, device, block_values), max(1, (1 << 24) // max(k, 1)))


def ties(
    factors: Sequence[Factors],
    weights: Sequence[float],
    density: float,
    majority_sign: MajoritySign = "total",
    *,
    module: str = "",
    block_values: int | None = None,
    sample: int = _SAMPLE,
) -> Tensor:
    """``merge.ties`` of the inputs' products ``B_i @ A_i``, without forming them whole.

    Args:
        factors: the inputs, of one shape d x k (any ranks; rank 0 is a zero delta).
        weights, density, majority_sign: as ``merge.ties``.
        block_values: about how many values a block of rows holds (at least one row; default
            ``compose.lowrank.block_rows``'s, by device and threads).
        sample: values drawn to bracket each input's threshold.

    Returns:
        The d x k fp32 TIES delta, equal to ``merge.ties([product(f) for f in factors], ...)``.

    Example:
        >>> dense = ties([Factors(A1, B1), Factors(A2, B2)], [1.0, 1.0], 0.2)  # doctest: +SKIP
        >>> torch.equal(dense, merge.ties([B1 @ A1, B2 @ A2], [1.0, 1.0], 0.2))
        True
    """
    return _merge(factors, weights, density, majority_sign, module, block_values, sample, True)


def magnitude_prune(
    factors: Sequence[Factors],
    weights: Sequence[float],
    density: float,
    *,
    module: str = "",
    block_values: int | None = None,
    sample: int = _SAMPLE,
) -> Tensor:
    """``merge.magnitude_prune`` of the inputs' products, without forming them whole."""
    return _merge(factors, weights, density, "total", module, block_values, sample, False)


def _merge(
    factors: Sequence[Factors],
    weights: Sequence[float],
    density: float,
    majority_sign: MajoritySign,
    module: str,
    block_values: int | None,
    sample: int,
    elect: bool,
) -> Tensor:
    import torch

    _check_weights(len(factors), weights, module)
    _check_density(density)
    wide = [Factors(A=f.A.double(), B=f.B.double()) for f in factors]
    n, device = len(wide), wide[0].A.device
    d, k = int(wide[0].B.shape[0]), int(wide[0].A.shape[1])
    rows = rows_per_block(d, k, device, block_values)
    buffers = _Buffers.allocate(n, rows, k, device)
    trims = _thresholds(factors, wide, density, buffers, sample)
    out = torch.empty(d, k, device=device)
    threshold = torch.tensor(
        [-math.inf if t.keep_all else t.threshold for t in trims], device=device
    ).view(-1, 1, 1)
    w = torch.tensor(list(weights), dtype=torch.float32, device=device).view(-1, 1, 1)
    unweighted = all(x == 1.0 for x in weights)  # x * 1.0 is x: the multiply can go
    remaining = [t.ties or 0 for t in trims]  # ties still to keep, of the inputs that count them
    for start in range(0, d, rows):
        stop = min(start + rows, d)
        b = buffers.view(stop - start)
        for i, f in enumerate(wide):
            _product_rows(f, start, stop, b.wide, b.stacked[i])
        # keep_largest's trim, x * (|x| >= t): masks are fp32 0/1 values (a float times a bool
        # mask is several times slower on the CPU), so every input trims in the same ops.
        torch.ge(torch.abs(b.stacked, out=b.scratch), threshold, out=b.mask)
        for i, t in enumerate(trims):
            if t.ties is not None:  # only the first few values tied at t are kept
                remaining[i] = _keep_ties(b.scratch[i], b.mask[i], t.threshold, remaining[i])
        b.stacked.mul_(b.mask)
        for i, t in enumerate(trims):
            if t.keep_none:
                b.stacked[i].zero_()
        rows_out = out[start:stop]
        if not elect:
            if not unweighted:
                b.stacked.mul_(w)
            torch.sum(b.stacked, dim=0, out=rows_out)
            continue
        # merge._elect_and_merge's steps. A value agrees when its sign is the elected one (+1
        # where the votes are >= 0): x * e > 0 with e = copysign(1, votes). Only votes of -0.0
        # differ from ``votes >= 0``, and those are sums of zeros, which never agree (and NaN
        # votes, whose value is NaN either way).
        if majority_sign == "total":
            _sum(b.stacked, b.votes)
        else:
            _sum(torch.sign(b.stacked, out=b.scratch), b.votes)
        torch.copysign(b.ones, b.votes, out=b.votes)
        torch.gt(torch.mul(b.stacked, b.votes, out=b.scratch), 0, out=b.mask)
        if not unweighted:
            b.stacked.mul_(w)
        b.stacked.mul_(b.mask)
        torch.sum(b.stacked, dim=0, out=rows_out)
        _sum(b.mask, b.votes)
        rows_out.div_(b.votes.clamp_(min=1))
    return out


def _sum(stacked: Tensor, out: Tensor) -> None:
    """``stacked.sum(dim=0)`` for the votes and the counts; of two inputs one addition, without
    the reduction's pass that zeroes ``out``. It differs from the sum only in a -0.0 for +0.0
    where both terms are -0.0: a count never is; votes only pick a sign, and where both values
    are zeros neither agrees with either sign."""
    import torch

    if stacked.shape[0] == 2:
        torch.add(stacked[0], stacked[1], out=out)
    else:
        torch.sum(stacked, dim=0, out=out)


@dataclass
class _Buffers:
    """One block's temporaries, allocated once: a fresh full-size allocation faults its pages
    in, which on a CPU costs as much as the arithmetic on them."""

    stacked: Tensor
    """(N, rows, k): the inputs' values, then trimmed, then weighted and masked."""
    scratch: Tensor
    mask: Tensor
    wide: Tensor
    """(rows, k) fp64: one input's product before its rounding to fp32."""
    votes: Tensor
    ones: Tensor

    @classmethod
    def allocate(cls, n: int, rows: int, k: int, device: torch.device) -> _Buffers:
        import torch

        def new(*shape: int) -> Tensor:
            return torch.empty(*shape, device=device)

        wide = torch.empty(rows, k, dtype=torch.float64, device=device)
        ones = torch.ones(rows, k, device=device)
        return cls(new(n, rows, k), new(n, rows, k), new(n, rows, k), wide, new(rows, k), ones)

    def view(self, rows: int) -> _Buffers:
        """The first ``rows`` rows of every buffer (the last block may be shorter)."""
        return _Buffers(
            self.stacked[:, :rows], self.scratch[:, :rows], self.mask[:, :rows],
            self.wide[:rows], self.votes[:rows], self.ones[:rows],
        )  # fmt: skip


def _product_rows(f: Factors, start: int, stop: int, wide: Tensor, out: Tensor) -> None:
    """Rows ``start:stop`` of ``B @ A`` (fp64 factors) into ``out`` (fp32), via ``wide``."""
    import torch

    torch.matmul(f.B[start:stop], f.A, out=wide)
    out.copy_(wide)


def _keep_ties(magnitude: Tensor, mask: Tensor, threshold: float, remaining: int) -> int:
    """Mask of the values above ``threshold`` and the first ``remaining`` equal to it (index
    order, as ``keep_largest``); returns how many ties later blocks still keep."""
    import torch

    torch.gt(magnitude, threshold, out=mask)
    if remaining > 0:
        tied = torch.nonzero((magnitude == threshold).view(-1)).squeeze(1)[:remaining]
        mask.view(-1)[tied] = 1.0
        remaining -= int(tied.numel())
    return remaining


def _thresholds(
    factors: Sequence[Factors],
    wide: Sequence[Factors],
    density: float,
    buffers: _Buffers,
    sample: int,
) -> list[_Trim]:
    """Each input's trim: its k-th largest magnitude and how ties at it are kept."""
    import torch

    d, k = int(wide[0].B.shape[0]), int(wide[0].A.shape[1])
    n, rows = d * k, int(buffers.stacked.shape[1])
    keep = int(density * n)
    if density >= 1:
        return [_Trim(0.0, None, keep_all=True) for _ in wide]
    if keep == 0:
        return [_Trim(0.0, None, keep_none=True) for _ in wide]
    if n <= 8 * sample:
        return [_trim_of(_magnitude(f, buffers), keep) for f in wide]
    brackets = [_bracket(f, keep, sample) for f in factors]
    device = wide[0].A.device
    low = torch.tensor([lo for lo, _ in brackets], device=device).view(-1, 1, 1)
    high = torch.tensor([hi for _, hi in brackets], device=device).view(-1, 1, 1)
    above = torch.zeros(len(wide), dtype=torch.float64, device=device)
    inside: list[list[Tensor]] = [[] for _ in wide]
    for start in range(0, d, rows):
        stop = min(start + rows, d)
        b = buffers.view(stop - start)
        for i, f in enumerate(wide):
            _product_rows(f, start, stop, b.wide, b.stacked[i])
        magnitude = b.stacked.abs_()
        above += torch.gt(magnitude, high, out=b.mask).sum(dim=(1, 2)).double()
        between = torch.ge(magnitude, low, out=b.scratch).sub_(b.mask)  # low <= x <= high
        for i in range(len(wide)):
            inside[i].append(magnitude[i][between[i].bool()])
    trims = []
    counts = [int(a) for a in above.tolist()]
    for i, f in enumerate(wide):
        kept = torch.cat(inside[i])
        if counts[i] < keep <= counts[i] + kept.numel():
            threshold = _kth_descending(kept, keep - counts[i] - 1)
            greater = counts[i] + int((kept > threshold).sum())
            equal = int((kept == threshold).sum())
            trims.append(_ties_at(float(threshold), keep - greater, equal))
        else:  # the draw missed: select on the whole magnitude
            trims.append(_trim_of(_magnitude(f, buffers), keep))
    return trims


def _kth_descending(values: Tensor, index: int) -> Tensor:
    """``values.sort(descending=True).values[index]``; on the CPU by selection, not a sort."""
    import torch

    if values.device.type == "cpu":
        return torch.kthvalue(values, values.numel() - index).values
    return values.sort(descending=True).values[index]


def _trim_of(magnitude: Tensor, keep: int) -> _Trim:
    threshold = _kth_largest_directly(magnitude, keep)
    greater = int((magnitude > threshold).sum())
    return _ties_at(float(threshold), keep - greater, int((magnitude == threshold).sum()))


def _ties_at(threshold: float, missing: int, equal: int) -> _Trim:
    # Keeping every value equal to the threshold is the same when all are to be kept, or when
    # the threshold is zero (a kept zero and a trimmed one are both zero).
    return _Trim(threshold, None if missing == equal or threshold == 0 else missing)


def _magnitude(f: Factors, buffers: _Buffers) -> Tensor:
    """One input's whole magnitude (flat): the small inputs' and the missed draws' path."""
    import torch

    d, k = int(f.B.shape[0]), int(f.A.shape[1])
    rows = int(buffers.wide.shape[0])
    out = torch.empty(d, k, device=f.A.device)
    for start in range(0, d, rows):
        stop = min(start + rows, d)
        _product_rows(f, start, stop, buffers.wide[: stop - start], out[start:stop])
    return out.abs_().view(-1)


def _bracket(f: Factors, keep: int, sample: int) -> tuple[float, float]:
    """``merge.kth_largest_by_sample``'s bracket, from values computed at drawn positions."""
    import torch

    d, k = int(f.B.shape[0]), int(f.A.shape[1])
    n = d * k
    generator = torch.Generator(device=f.A.device).manual_seed(0)
    index = torch.randint(n, (sample,), generator=generator, device=f.A.device)
    # In fp32: the drawn values only place the bracket, and the fp64 rows gather slowly.
    rows = torch.index_select(f.B.float(), 0, index // k)
    columns = torch.index_select(f.A.float().T.contiguous(), 0, index % k)
    drawn = torch.einsum("sr,sr->s", rows, columns).abs()
    fraction = keep / n
    position = fraction * sample
    spread = 6 * math.sqrt(sample * fraction * (1 - fraction)) + 16
    high = _kth_descending(drawn, max(int(position - spread), 0))
    low = _kth_descending(drawn, min(int(position + spread), sample - 1))
    return float(low), float(high)
