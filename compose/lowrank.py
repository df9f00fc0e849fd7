"""Truncated SVDs of dense deltas: a randomized range finder whose error is checked, with the
exact SVD as the fallback. Pure math on tensors; works on any device.

TIES, DARE and magnitude pruning produce a dense d x k delta per module that must be factored
back to a LoRA of rank R. A full SVD costs O(d k min(d, k)) (11 s per 28672 x 8192 module on
an H200, minutes on a CPU); the top R triplets need only O(d k l) per pass, l = R + p.

The randomized path (Halko, Martinsson & Tropp 2011, algorithms 4.4 and 5.1), on a sample
``Omega`` drawn from a CPU generator with a fixed seed (the same draws on every device, so a
rebuild on a CPU retraces a GPU build), is subspace iteration::

    Q = orth(A Omega)     # or orth(start): for a merge of LoRAs, their B factors
    repeat:  Z, Rz = qr(A^T Q);  Y = A Z       # two d x k x l products per pass
             Q^T A = Rz^T Z^T = u S w^T         # SVD of the small l x l core
             U = Q u,  V = Z w                  # Ritz vectors: U^T A = S V^T exactly
             Q = orth(Y)                         # the next pass

The passes run in fp32 for an fp32 matrix until its rounding floors the residual, then in
fp64 with the matrix still stored in fp32: each block of rows is widened as a product reads it.

**The check.** By construction ``U_r^T A = S_r V_r^T``, so the only residual of the computed
triplets is ``R1 = A V_r - U_r S_r = Y w_r - Q u_r S_r`` (no extra product). Wedin's theorem
bounds the angle between the computed and the exact top-r singular subspaces by
``|R1|_F / delta``, where ``delta`` separates ``s_r`` from the rest of the spectrum; we take
``delta = s_r - s_{r+1} - |R1|_F`` (``s_{r+1}`` is the largest computed value below the cut,
and ``|R1|_F`` covers what the sample may still miss). The rank-r result is ``P_U A`` with
``P_U = U_r U_r^T``, and ``|P_U A - P* A|_F <= sqrt(2) |sin Theta|_F |A|_2``, so::

    relative error vs the exact truncated SVD <= sqrt(2) |R1|_F / delta * s_1 / |s_{1..r}|_2

Passes run until that estimate is at most ``tolerance`` (default 1e-5); the sample grows when
passes stop helping (a slowly decaying spectrum whose gap lies past the sample), and when the
estimate still cannot be shown (no gap at the cut: the truncated SVD is then not unique) the
exact SVD is computed instead. ``s_{r+1}`` is a lower bound of the true value, so the estimate
is not a proof; the property tests in ``tests/compose/test_lowrank.py`` compare it with the
exact truncated SVD over spectra built to be hard (clusters at the cut, slow decay, TIES).

Rank by energy: with ``energy=E`` the rank is the smallest r whose computed values keep
``E`` of ``|A|_F^2`` (computed exactly, not estimated); computed values are lower bounds of
the true ones, so the true smallest rank is at most r.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from torch import Tensor

Method = Literal["randomized", "exact"]

TOLERANCE = 1e-5
"""Relative Frobenius error against the exact truncated SVD that the randomized path shows."""
OVERSAMPLE = 10
POWER_PASSES = 12
"""Passes at most before the sample is doubled (it is doubled sooner when a pass stops helping)."""
SEED = 0
_MAX_SAMPLE_FRACTION = 0.25
"""Past this fraction of min(d, k) columns the exact SVD is cheaper than sampling more."""


@dataclass
class Svd:
    """Top-r singular triplets of a matrix, and how they were obtained."""

    u: Tensor  # (d, r)
    s: Tensor  # (r,), float64
    vh: Tensor  # (r, k)
    total: float
    """Squared Frobenius norm of the whole matrix."""
    method: Method
    estimate: float
    """The randomized path's error estimate (0.0 for the exact SVD)."""
    passes: int = 0

    @property
    def rank(self) -> int:
        return int(self.s.shape[0])

    @property
    def retained(self) -> float:
        return float((self.s.double() ** 2).sum())


def rank_for_energy(s: Tensor, total: float, energy: float) -> int:
    """Smallest r with ``sum(s[:r]^2) >= energy * total`` (at least 1; ``len(s)`` when the
    values given do not reach it)."""
    import torch

    if total <= 0:
        return 1
    cumulative = torch.cumsum(s.double() ** 2, dim=0)
    reached = torch.nonzero(cumulative >= energy * total * (1 - 1e-12))
    return int(reached[0]) + 1 if reached.numel() else int(s.shape[0])


def _orth(m: Tensor) -> Tensor:
    import torch

    return torch.linalg.qr(m).Q


def _sample(k: int, columns: int, like: Tensor, dtype: torch.dtype, seed: int) -> Tensor:
    import torch

    generator = torch.Generator().manual_seed(seed)
    omega = torch.randn(k, columns, generator=generator, dtype=torch.float64)
    return omega.to(device=like.device, dtype=dtype)


def exact_svd(matrix: Tensor, rank: int | None, energy: float | None) -> Svd:
    """The LAPACK (or cuSOLVER) SVD in fp64, truncated to ``rank`` or by ``energy``."""
    import torch

    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    total = float((s**2).sum())
    r = rank if rank is not None else rank_for_energy(s, total, energy or 1.0)
    return Svd(u[:, :r], s[:r], vh[:r], total, "exact", 0.0)


def truncated_svd(
    matrix: Tensor,
    rank: int | None = None,
    *,
    energy: float | None = None,
    method: Method = "randomized",
    tolerance: float = TOLERANCE,
    oversample: int = OVERSAMPLE,
    power_passes: int = POWER_PASSES,
    seed: int = SEED,
    total: float | None = None,
    start: Tensor | None = None,
) -> Svd:
    """Top singular triplets of ``matrix``: ``rank`` of them, or as many as keep ``energy``.

    Args:
        matrix: d x k, fp32 or fp64, on any device (the work stays there).
        rank: how many triplets; or None with ``energy`` in (0, 1].
        method: ``randomized`` (checked, exact fallback) or ``exact``.
        tolerance: the relative error against the exact truncated SVD the randomized path must
            show before it is used.
        total: ``squared_norm(matrix)``, where the caller has it already.
        start: d x c columns whose span is likely close to the top singular subspace (for a
            merge of LoRAs, their B factors): the first sample instead of ``matrix @ Omega``,
            of ``max(l, c)`` columns (completed with drawn ones; past a quarter of ``min(d,
            k)``, mixed down by a Gaussian). The check does not depend on it; a good start
            saves passes.

    Returns:
        ``Svd`` with ``u`` (d x r), ``s`` (fp64), ``vh`` (r x k) in the matrix's dtype and
        device, the squared Frobenius norm of the whole matrix, and which path produced it.

    Example:
        >>> result = truncated_svd(delta, 16)                              # doctest: +SKIP
        >>> result.method, result.estimate < 1e-5
        ('randomized', True)
    """
    import torch

    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank and energy")
    d, k = matrix.shape
    n = min(d, k)
    work = matrix if matrix.dtype in (torch.float32, torch.float64) else matrix.float()
    total = squared_norm(work) if total is None else total
    target = rank if rank is not None else 1
    columns = min(n, target + max(oversample, target))
    if method == "exact" or total == 0 or columns > _MAX_SAMPLE_FRACTION * n:
        return exact_svd(matrix, rank, energy)
    # The passes' arithmetic: the matrix's dtype, fp64 once fp32 rounding stops the progress.
    dtype = work.dtype
    floor = _FLOOR * float(torch.finfo(work.dtype).eps) * math.sqrt(total)
    if start is None:
        q = _orth(_times(work, _sample(k, columns, work, dtype, seed)))
    else:  # the sample holds the whole start where it can
        columns = max(columns, min(int(start.shape[1]), int(_MAX_SAMPLE_FRACTION * n)))
        q = _orth(_first_sample(work, start, columns, dtype, seed))
    passes = 0
    while True:
        previous = math.inf
        for step in range(power_passes):
            passes += 1
            z, r_z = torch.linalg.qr(_times_transposed(work, q))
            y = _times(work, z)
            # The l x l core's SVD runs on the host: on a GPU, cuSOLVER's takes 0.5 ms of
            # launches for a 32 x 32 matrix, and the host needs ``s`` for the checks anyway.
            u_s, s, w_h = torch.linalg.svd(r_z.T.double().cpu())
            r = rank if rank is not None else rank_for_energy(s, total, energy or 1.0)
            if rank is None and float((s[:r] ** 2).sum()) < (energy or 1.0) * total:
                break  # the sample holds too little energy: more passes cannot help
            if r >= s.shape[0]:
                break  # no value below the cut to measure the gap with
            u_r = u_s[:, :r].to(device=work.device, dtype=dtype)
            w_r = w_h[:r].T.to(device=work.device, dtype=dtype)
            s_r = s[:r].to(device=work.device, dtype=dtype)
            r1 = float(torch.linalg.vector_norm(y @ w_r - q @ (u_r * s_r), dtype=torch.float64))
            delta = float(s[r - 1] - s[r]) - r1
            kept = float((s[:r] ** 2).sum().sqrt())
            if delta > 0 and kept > 0:
                estimate = math.sqrt(2) * r1 / delta * float(s[0]) / kept
                if estimate <= tolerance:
                    return Svd(
                        (q @ u_r).to(matrix.dtype), s[:r].clone().to(work.device),
                        (z @ w_r).T.to(matrix.dtype), total, "randomized", estimate, passes,
                    )  # fmt: skip
            # The first passes settle the sample; after them the residual shrinks by
            # (s_{l+1} / s_r)^2 per pass, and less than half means the gap lies past it.
            stalled = step >= 2 and r1 > 0.5 * previous
            # fp32 rounding floors the residual near 1e-7 |A|. When the bound needs less than
            # that, finish in fp64 once the residual is at the floor, or will be after the
            # next pass at this pass's rate (the matrix stays fp32; its blocks are widened as
            # the products read them).
            needed = tolerance * max(delta + r1, 0.0) * kept / (math.sqrt(2) * float(s[0]))
            next_r1 = r1 * min(1.0, r1 / previous) if step >= 1 else math.inf
            at_floor = needed < floor and min(r1, next_r1) <= floor
            previous = r1
            if (stalled or at_floor) and dtype != torch.float64:
                dtype, y, previous = torch.float64, y.double(), math.inf
            elif stalled:
                break  # the gap lies past the sample: grow it
            q = _orth(y)
        columns *= 2
        if columns > _MAX_SAMPLE_FRACTION * n:
            return exact_svd(matrix, rank, energy)
        # The new sample keeps what was found and adds fresh directions.
        q = q.to(dtype)
        fresh = _times(work, _sample(k, columns - q.shape[1], work, dtype, seed + passes))
        q = _orth(torch.cat([q, fresh], dim=1))


_FLOOR = 8.0
"""A residual within this many units of rounding (eps |A|_F) is at the floor of its dtype."""
BLOCK_VALUES_PER_THREAD = 1 << 17
"""Values per CPU thread in a block of rows (``block_rows``): 1 MiB of fp32 for two threads,
small enough that a block's temporaries stay in cache, large enough per thread that an op's
fork and join cost little (2^16 to 2^21 values per block measured within 10% on 2 threads)."""
BLOCK_VALUES_ACCELERATOR = 1 << 24
"""On a GPU, blocks of 64 MiB of fp32: few kernel launches and host syncs per module."""


def block_rows(d: int, k: int, device: torch.device, values: int | None = None) -> int:
    """Rows of a d x k matrix that one block holds: about ``values`` values (default: by
    device, above), at least one row, at most all of them."""
    import torch

    if values is None:
        values = (
            BLOCK_VALUES_PER_THREAD * torch.get_num_threads()
            if device.type == "cpu"
            else BLOCK_VALUES_ACCELERATOR
        )
    return max(1, min(d, values // max(k, 1)))


def _first_sample(
    matrix: Tensor, start: Tensor, columns: int, dtype: torch.dtype, seed: int
) -> Tensor:
    import torch

    start = start.to(device=matrix.device, dtype=dtype)
    given = int(start.shape[1])
    if given >= columns:
        return start @ _sample(given, columns, matrix, dtype, seed)
    drawn = _times(matrix, _sample(int(matrix.shape[1]), columns - given, matrix, dtype, seed))
    return torch.cat([start, drawn], dim=1)


def _widened(matrix: Tensor, dtype: torch.dtype) -> Iterator[tuple[slice, Tensor]]:
    """The matrix's blocks of rows, each copied into one reused ``dtype`` buffer (widening
    the whole matrix is a d x k temporary, and slower than the products that read it)."""
    import torch

    d, k = matrix.shape
    rows = block_rows(d, k, matrix.device)
    buffer = torch.empty(rows, k, dtype=dtype, device=matrix.device)
    for start in range(0, d, rows):
        part = slice(start, min(start + rows, d))
        wide = buffer[: part.stop - start]
        wide.copy_(matrix[part])
        yield part, wide


def squared_norm(matrix: Tensor) -> float:
    """``|matrix|_F^2``, accumulated in fp64. Of an fp32 (or narrower) matrix, finite exactly
    when every value is: a square of one is at most 1.2e77, and fp64 holds sums of those."""
    import torch

    if matrix.dtype == torch.float64:
        return float(torch.linalg.vector_norm(matrix) ** 2)
    sums = [torch.dot(wide.view(-1), wide.view(-1)) for _, wide in _widened(matrix, torch.float64)]
    return float(torch.stack(sums).sum())


def _times(matrix: Tensor, right: Tensor) -> Tensor:
    """``matrix @ right`` in ``right``'s dtype (an fp32 matrix is widened block by block)."""
    import torch

    if matrix.dtype == right.dtype:
        return matrix @ right
    out = torch.empty(matrix.shape[0], right.shape[1], dtype=right.dtype, device=right.device)
    for part, wide in _widened(matrix, right.dtype):
        torch.matmul(wide, right, out=out[part])
    return out


def _times_transposed(matrix: Tensor, left: Tensor) -> Tensor:
    """``matrix.T @ left`` in ``left``'s dtype, as ``(left.T @ matrix).T``: the product that
    reads ``matrix`` in its own row order (on a CPU two thirds of ``matrix.T @ left``'s time)."""
    import torch

    if matrix.dtype == left.dtype:
        return (left.T @ matrix).T
    out = torch.zeros(left.shape[1], matrix.shape[1], dtype=left.dtype, device=left.device)
    for part, wide in _widened(matrix, left.dtype):
        out.addmm_(left[part].T, wide)
    return out.T
