"""Float assertions that hold on any CPU: they check the property, never the bits.

BLAS kernels sum in an order that depends on the CPU (AVX2 vs AVX-512 paths), the thread
count and MKL's settings, so two computations of one fp32 product may differ in the last
bit; rounded to bf16 such values may land one step apart. These helpers assert what the code
promises: the exact (fp64) value within the float error bound of the computation.
"""

from __future__ import annotations

import torch

U32 = 2.0**-24
"""Unit roundoff of fp32."""


def gamma(n: int, u: float = U32) -> float:
    """``n u / (1 - n u)``: the classic bound on the relative error of an n-term dot product
    (Higham, Accuracy and Stability of Numerical Algorithms, 3.1), in any summation order."""
    return n * u / (1 - n * u)


def assert_rounded_once(got: torch.Tensor, exact: torch.Tensor, error: torch.Tensor) -> int:
    """``got`` is ``exact`` computed in fp32 within ``error`` (elementwise, absolute) and then
    rounded once to ``got.dtype``.

    Rounding is monotone, so the fp32 result ``c`` with ``|c - exact| <= error`` rounds to a
    value between ``round(exact - error)`` and ``round(exact + error)``. Where those two are
    equal (the value is not within the bound of a rounding boundary) ``got`` must be exactly
    that; elsewhere anything in between: one of two neighbours, one step of ``got.dtype``
    apart, unless cancellation (``|exact|`` far below ``error``) makes the interval wider.

    Returns:
        How many values are not decided by the bound (the caller checks they are few, so the
        assertion stays sharp).
    """
    assert got.shape == exact.shape
    low = (exact.double() - error).float().to(got.dtype)
    high = (exact.double() + error).float().to(got.dtype)
    inside = (got.double() >= low.double()) & (got.double() <= high.double())
    if not bool(inside.all()):
        index = tuple(int(i) for i in (~inside).nonzero()[0])
        raise AssertionError(
            f"{int((~inside).sum())} values are not the exact value rounded once; at {index}:"
            f" got {float(got[index])!r}, exact {float(exact[index])!r} +- {float(error[index])!r}"
        )
    return int((low != high).sum())


def assert_argmax_within(got: torch.Tensor, expected: torch.Tensor, tolerance: float) -> None:
    """``got`` is ``expected`` within ``tolerance`` (max abs), and its argmax is a choice that
    bound allows: where ``expected``'s top-2 gap exceeds ``2 * tolerance`` exactly its argmax,
    elsewhere any entry within ``2 * tolerance`` of the maximum (a near-tie either side of
    which any rounding may land)."""
    assert float((got - expected).abs().max()) <= tolerance
    top = expected.max(dim=-1, keepdim=True).values
    picked = expected.gather(-1, got.argmax(dim=-1, keepdim=True))
    assert bool((picked >= top - 2 * tolerance).all()), (picked - top).min()


def argmax_is(scores: list[float], index: int, tolerance: float) -> set[float]:
    """The values ``float(argmax == index)`` may take for scores computed within ``tolerance``
    of ``scores``: {1.0} where ``index`` beats every other choice by more than
    ``2 * tolerance``, {0.0} where another choice beats it by more, and both at a near-tie,
    where any rounding may land on either side."""
    best = max(scores)
    within = {i for i, score in enumerate(scores) if score >= best - 2 * tolerance}
    if within == {index}:
        return {1.0}
    return {0.0, 1.0} if index in within else {0.0}
