"""Merge math: pure functions on tensors, readable as the papers' steps. No file I/O.

LoRA deltas are handled in factored form wherever the result is exact or low-rank (``cat``,
``svd_merge``); the sparsifying operators (TIES, DARE, magnitude pruning) act per value and so
work on each module's dense delta, then ``factor`` it back to a LoRA of rank R
(``compose.blockwise`` computes TIES and magnitude pruning of LoRA inputs with the same values
block by block, never forming the inputs' dense deltas).

Factored inputs are converted to fp64 for the arithmetic (cheap next to reading the weights);
the per-value operators work in fp32 (fp64 inputs stay fp64: a value is the sum of at most N
terms, so fp32 keeps it within N units in the last place, and halving the memory of a module's
N stacked deltas is what lets 70B-shape modules merge on a GPU). Results are fp32; the caller
rounds once to the output dtype. Every function runs on the device its inputs are on; random
draws (DARE's drops, the range finder's sample) come from CPU generators, so a GPU build and a
CPU rebuild draw the same values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from schemas.errors import IncompatibleAdapters, InvalidRecipe

if TYPE_CHECKING:
    import torch
    from torch import Tensor

MajoritySign = Literal["total", "frequency"]


@dataclass
class Factors:
    """One module's LoRA in factored form: ``delta = B @ A`` (the scale already folded in)."""

    A: Tensor  # (r, k)
    B: Tensor  # (d, r)

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def delta(self) -> Tensor:
        return self.B @ self.A


@dataclass
class Truncation:
    """A rank-R result and how much of the exact delta it keeps."""

    factors: Factors
    retained: float
    """Squared Frobenius norm kept: sum of the kept singular values squared."""
    total: float
    """Squared Frobenius norm of the exact delta."""
    method: str = "exact"
    """How the truncated SVD was computed: ``exact``, ``randomized`` (``compose.lowrank``) or
    ``lowrank`` (QR of the factors and the SVD of their small core, exact)."""

    @property
    def energy(self) -> float:
        """Fraction of the squared Frobenius norm kept (1.0 for a zero delta)."""
        return self.retained / self.total if self.total > 0 else 1.0


def _check_weights(count: int, weights: Sequence[float], module: str) -> None:
    if len(weights) != count:
        raise InvalidRecipe(
            f"{len(weights)} weights for {count} inputs (give one weight per input)",
            module=module,
        )


def check_same_shapes(
    shapes: Sequence[tuple[int, ...]], module: str, labels: Sequence[str]
) -> None:
    """Raise ``IncompatibleAdapters`` naming the module and adapter whose shape differs."""
    for label, shape in zip(labels[1:], shapes[1:], strict=True):
        if shape != shapes[0]:
            raise IncompatibleAdapters(
                f"module {module!r} is {tuple(shapes[0])} in {labels[0]} but {tuple(shape)}"
                f" in {label}: the adapters were trained on different base shapes",
                module=module,
            )


def cat(factors: Sequence[Factors], weights: Sequence[float], *, module: str = "") -> Factors:
    """The exact weighted sum ``sum_i w_i B_i A_i`` as one LoRA of rank ``sum_i r_i``.

    ``A = [A_1; A_2; ...]`` (stacked rows), ``B = [w_1 B_1, w_2 B_2, ...]`` (side by side).
    Nothing is approximated, so it works across ranks and is linear in every input.

    Example:
        >>> merged = cat([Factors(A1, B1), Factors(A2, B2)], [0.7, 0.3])     # doctest: +SKIP
        >>> torch.allclose(merged.delta(), 0.7 * B1 @ A1 + 0.3 * B2 @ A2)
        True
    """
    import torch

    _check_weights(len(factors), weights, module)
    return Factors(
        A=torch.cat([f.A.double() for f in factors], dim=0).float(),
        B=torch.cat(
            [w * f.B.double() for f, w in zip(factors, weights, strict=True)], dim=1
        ).float(),
    )


def _check_rank(rank: int, d: int, k: int, module: str) -> None:
    if rank <= 0:
        raise InvalidRecipe(f"rank must be a positive integer, got {rank}", module=module)
    if rank > min(d, k):
        raise InvalidRecipe(
            f"rank {rank} exceeds the full rank {min(d, k)} of module {module!r} ({d}x{k})",
            module=module,
        )


def svd_merge(
    factors: Sequence[Factors],
    weights: Sequence[float],
    rank: int | None,
    *,
    energy: float | None = None,
    module: str = "",
) -> Truncation:
    """Best rank-``rank`` approximation (Eckart–Young) of ``sum_i w_i B_i A_i``, in low rank.

    Steps, never forming the d x k delta: stack ``Bc = [w_i B_i]`` (d x R) and ``Ac = [A_i]``
    (R x k); QR-factor ``Bc = Qb Rb`` and ``Ac^T = Qa Ra``; the delta is ``Qb (Rb Ra^T) Qa^T``,
    so an SVD of the small R x R core ``U S V^T`` gives the delta's SVD ``(Qb U) S (Qa V)^T``.
    The result keeps the top ``rank`` triplets, split evenly: ``B = Qb U sqrt(S)``,
    ``A = sqrt(S) V^T Qa^T``. If the delta's rank is below ``rank`` the extra rows/columns are
    zero, so the output always has the rank asked for.

    With ``rank=None`` and ``energy=E`` the rank is the smallest keeping the fraction ``E`` of
    the squared Frobenius norm (the core's singular values are the delta's, so it is exact).

    Returns:
        ``Truncation``: the factors, and ``energy = sum(S[:rank]^2) / sum(S^2)``, the fraction
        of the squared Frobenius norm kept.

    Reference: Eckart & Young (1936); https://arxiv.org/abs/2311.03099 (task arithmetic in
    low rank).
    """
    import torch

    from compose.lowrank import rank_for_energy

    merged = cat(factors, weights, module=module)
    d, k = merged.B.shape[0], merged.A.shape[1]
    q_b, r_b = torch.linalg.qr(merged.B.double())
    q_a, r_a = torch.linalg.qr(merged.A.double().T)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)
    if rank is None:
        rank = rank_for_energy(s, float((s**2).sum()), _check_energy(energy))
    _check_rank(rank, d, k, module)
    keep = min(rank, s.shape[0])
    root = s[:keep].sqrt()
    b = (q_b @ u[:, :keep]) * root
    a = (root[:, None] * vh[:keep]) @ q_a.T
    if keep < rank:
        b = torch.cat([b, b.new_zeros(d, rank - keep)], dim=1)
        a = torch.cat([a, a.new_zeros(rank - keep, k)], dim=0)
    return Truncation(
        Factors(A=a.float(), B=b.float()),
        float((s[:keep] ** 2).sum()),
        float((s**2).sum()),
        "lowrank",
    )


def _check_energy(energy: float | None) -> float:
    if energy is None or not 0 < energy <= 1:
        raise InvalidRecipe(f"energy must be in (0, 1], got {energy}", field="energy")
    return energy


def factor(
    delta: Tensor,
    rank: int | None,
    *,
    energy: float | None = None,
    method: Literal["randomized", "exact"] = "randomized",
    module: str = "",
    start: Tensor | None = None,
) -> Truncation:
    """A dense delta as a LoRA of rank ``rank`` (truncated SVD, balanced split ``B = U
    sqrt(S)``, ``A = sqrt(S) V^T``), or, with ``rank=None``, of the smallest rank keeping the
    fraction ``energy`` of its squared Frobenius norm.

    ``randomized`` uses ``compose.lowrank.truncated_svd``: a range finder whose error against
    the exact truncated SVD is checked to be at most 1e-5 (relative), falling back to the
    exact SVD when it cannot be shown. ``exact`` is LAPACK's (cuSOLVER's) SVD in fp64.
    ``start`` (for a merge of LoRAs: their B factors side by side) seeds the range finder's
    first sample (``truncated_svd``'s ``start``).
    """
    import torch

    from compose.lowrank import squared_norm, truncated_svd

    d, k = delta.shape
    if rank is not None:
        _check_rank(rank, d, k, module)
    else:
        _check_energy(energy)
    # The squared norm, which the range finder needs anyway, shows whether every value is
    # finite (exactly, for fp32 values): a fraction of the passes of ``isfinite(delta).all()``.
    total = squared_norm(delta)
    finite = bool(torch.isfinite(delta).all()) if delta.dtype == torch.float64 else total < math.inf
    if not finite:
        raise InvalidRecipe(
            f"the combined delta of module {module!r} is not finite: weights this large"
            " overflow (use weights of the order of 1)",
            module=module,
        )
    svd = truncated_svd(
        delta,
        rank,
        energy=energy if rank is None else None,
        method=method,
        total=total,
        start=start,
    )
    root = svd.s.sqrt()
    a = root[:, None].to(svd.vh.dtype) * svd.vh
    b = svd.u * root.to(svd.u.dtype)
    return Truncation(Factors(A=a.float(), B=b.float()), svd.retained, svd.total, svd.method)


# -- dense-delta operators (values, not factors) ---------------------------------------------


def _check_density(density: float) -> None:
    if not 0 < density <= 1:
        raise InvalidRecipe(f"density must be in (0, 1], got {density}")


def _work(delta: Tensor) -> Tensor:
    """The dtype the per-value operators compute in: fp64 stays, anything else is fp32."""
    import torch

    return delta if delta.dtype == torch.float64 else delta.float()


def _stack(deltas: Sequence[Tensor], weights: Sequence[float], module: str) -> Tensor:
    import torch

    _check_weights(len(deltas), weights, module)
    return torch.stack([_work(d) for d in deltas])


def _weighted(stacked: Tensor, weights: Sequence[float]) -> Tensor:
    import torch

    w = torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device)
    return stacked * w.view(-1, *([1] * (stacked.dim() - 1)))


def keep_largest(delta: Tensor, density: float) -> Tensor:
    """Zero all but the ``int(density * numel)`` largest-magnitude values (TIES' "trim").

    The k-th largest magnitude is found with ``kthvalue`` (a selection, about twice as fast as
    ``topk``'s partial sort of k indices at 20% of 45M values); values tied with it are kept
    in index order until k are kept, so the count is exactly k like PEFT's ``topk``.
    """
    import torch

    if density >= 1:
        return delta
    k = int(density * delta.numel())
    flat = delta.reshape(-1)
    if k == 0:
        return torch.zeros_like(delta)
    magnitude = flat.abs()
    threshold = kth_largest(magnitude, k)
    mask = magnitude > threshold
    missing = k - int(mask.sum())
    if missing > 0:
        tied = torch.nonzero(magnitude == threshold).squeeze(1)[:missing]
        mask[tied] = True
    return (flat * mask).reshape(delta.shape)


_BITS = {"torch.float32": "int32", "torch.float64": "int64"}


def kth_largest(magnitude: Tensor, k: int) -> Tensor:
    """The ``k``-th largest of the non-negative values ``magnitude`` (1-D), exactly.

    ``kth_largest_by_sample``: a bracket found on a random sample, then a sort of only the
    values inside it. ``torch.kthvalue`` of one 235M-value slice (a 70B MLP delta) takes
    1.65 s on an H200, and of a 45M-value 7B one 540 ms on 2 CPU threads (510 ms on 16: it
    barely uses them); the bracket takes 4 ms and 340 ms (120 ms) there.
    """
    return kth_largest_by_sample(magnitude, k)


_SAMPLE = 1 << 18
"""Values drawn to bracket the k-th largest; the bracket then holds about 1% of them."""


def kth_largest_by_sample(magnitude: Tensor, k: int, *, sample: int = _SAMPLE) -> Tensor:
    """``kth_largest`` from a bracket found on a random sample, exact whatever the draw.

    The sample's values around rank ``k * sample / n`` (six standard deviations of that rank
    either side) give a bracket ``[low, high]``; one read counts the values above ``high`` and
    keeps those inside it. When the count shows that the k-th largest lies inside, it is the
    right one of the kept values, sorted; otherwise (a draw that missed: about 1e-9), and for
    inputs under eight samples, a direct selection answers (``kthvalue`` on the CPU, bisection
    over the bit patterns on a GPU). The draw (seeded) decides only the speed.
    """
    import torch

    n = magnitude.numel()
    if n <= 8 * sample:
        return _kth_largest_directly(magnitude, k)
    generator = torch.Generator(device=magnitude.device).manual_seed(0)
    drawn = magnitude[torch.randint(n, (sample,), generator=generator, device=magnitude.device)]
    drawn = drawn.sort(descending=True).values
    fraction = k / n
    position = fraction * sample
    spread = 6 * math.sqrt(sample * fraction * (1 - fraction)) + 16
    high = drawn[max(int(position - spread), 0)]
    low = drawn[min(int(position + spread), sample - 1)]
    above = int((magnitude > high).sum())
    inside = magnitude[(magnitude <= high) & (magnitude >= low)]
    if above < k <= above + inside.numel():
        return inside.sort(descending=True).values[k - above - 1]
    return _kth_largest_directly(magnitude, k)


def _kth_largest_directly(magnitude: Tensor, k: int) -> Tensor:
    import torch

    if magnitude.device.type != "cpu" and str(magnitude.dtype) in _BITS:
        return kth_largest_by_bits(magnitude, k)
    return torch.kthvalue(magnitude, magnitude.numel() - k + 1).values


def kth_largest_by_bits(magnitude: Tensor, k: int) -> Tensor:
    """``kth_largest`` by bisection over the bit patterns (fp32 or fp64, values >= 0)."""
    import torch

    bits = magnitude.view(getattr(torch, _BITS[str(magnitude.dtype)]))
    low, high = 0, int(bits.max())
    while low < high:
        middle = (low + high + 1) // 2
        if int((bits >= middle).sum()) >= k:
            low = middle
        else:
            high = middle - 1
    return torch.tensor(low, dtype=bits.dtype, device=bits.device).view(magnitude.dtype)


def drop_random(delta: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """DARE: keep each value with probability ``density`` and rescale by ``1 / density``.

    The mask is drawn on the CPU in fp64 from ``generator`` (a CPU generator), then moved to
    the delta's device: the same seed drops the same values wherever the merge runs."""
    import torch

    if density >= 1:
        return delta
    keep = torch.bernoulli(
        torch.full(tuple(delta.shape), density, dtype=torch.float64), generator=generator
    )
    return delta * keep.to(device=delta.device, dtype=delta.dtype) / density


def _elect_and_merge(stacked: Tensor, weights: Sequence[float], method: MajoritySign) -> Tensor:
    """TIES' "elect sign" and "disjoint merge": average, per value, the weighted inputs that
    agree with the elected sign (sign of the sum, or of the majority count)."""
    import torch

    votes = stacked.sum(dim=0) if method == "total" else stacked.sign().sum(dim=0)
    # A value agrees when its sign is the elected one (+1 where the votes are >= 0, else -1);
    # zeros never agree. Two comparisons instead of sign() == elected: four fewer passes over
    # the stack, which for a 70B MLP delta is 235M values per input.
    agree = torch.where(votes >= 0, stacked > 0, stacked < 0)
    merged = (_weighted(stacked, weights) * agree).sum(dim=0)
    return merged / agree.sum(dim=0, dtype=stacked.dtype).clamp(min=1)


def task_arithmetic(
    deltas: Sequence[Tensor], weights: Sequence[float], *, module: str = ""
) -> Tensor:
    """``sum_i w_i delta_i`` (https://arxiv.org/abs/2212.04089)."""
    return _weighted(_stack(deltas, weights, module), weights).sum(dim=0).float()


def magnitude_prune(
    deltas: Sequence[Tensor], weights: Sequence[float], density: float, *, module: str = ""
) -> Tensor:
    """Keep each input's top-``density`` values by magnitude, then the weighted sum."""
    _check_density(density)
    stacked = _stack([keep_largest(_work(d), density) for d in deltas], weights, module)
    return _weighted(stacked, weights).sum(dim=0).float()


def ties(
    deltas: Sequence[Tensor],
    weights: Sequence[float],
    density: float,
    majority_sign: MajoritySign = "total",
    *,
    module: str = "",
) -> Tensor:
    """TIES-merging: trim to the top ``density`` values, elect signs, disjoint mean
    (https://arxiv.org/abs/2306.01708)."""
    _check_density(density)
    stacked = _stack([keep_largest(_work(d), density) for d in deltas], weights, module)
    return _elect_and_merge(stacked, weights, majority_sign).float()


def dare(
    deltas: Sequence[Tensor],
    weights: Sequence[float],
    density: float,
    generator: torch.Generator,
    variant: Literal["linear", "ties"] = "linear",
    majority_sign: MajoritySign = "total",
    *,
    module: str = "",
) -> Tensor:
    """DARE: drop values at random and rescale, then a weighted sum (``linear``) or TIES' sign
    election (``ties``) (https://arxiv.org/abs/2311.03099). Seeded through ``generator``."""
    _check_density(density)
    stacked = _stack([drop_random(_work(d), density, generator) for d in deltas], weights, module)
    if variant == "ties":
        return _elect_and_merge(stacked, weights, majority_sign).float()
    return _weighted(stacked, weights).sum(dim=0).float()
