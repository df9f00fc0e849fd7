"""Merge math for deploy: pure functions on fp32 tensors, one per PEFT method.

Each function returns the new weight (or the delta to add) in the base layer's own layout, so
``fan_in_fan_out`` layers (GPT-2's ``Conv1D``, weight ``(in, out)``) come out transposed. The
formulas are PEFT's ``get_delta_weight`` / ``merge`` written as maths, checked against PEFT's
unmerged forward pass in the tests.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


def lora_scale(alpha: float, rank: int, *, rslora: bool = False) -> float:
    """``alpha / r``, or ``alpha / sqrt(r)`` for rank-stabilised LoRA (rsLoRA)."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def _t(weight: Tensor, fan_in_fan_out: bool) -> Tensor:
    return weight.T if fan_in_fan_out else weight


def lora_delta(a: Tensor, b: Tensor, scale: float, *, fan_in_fan_out: bool = False) -> Tensor:
    """``scale * B @ A`` (``(out, in)``; transposed for ``fan_in_fan_out`` layers)."""
    return _t((b @ a) * scale, fan_in_fan_out)


def add_lora_(
    weight: Tensor, a: Tensor, b: Tensor, scale: float, *, fan_in_fan_out: bool = False
) -> Tensor:
    """``weight += scale * B @ A`` in place (one fused fp32 matmul-add, no d x k temporary)."""
    if fan_in_fan_out:
        return weight.addmm_(a.T, b.T, alpha=scale)
    return weight.addmm_(b, a, alpha=scale)


def add_embedding_lora_(weight: Tensor, a: Tensor, b: Tensor, scale: float) -> Tensor:
    """``weight += embedding_lora_delta(a, b, scale)`` in place."""
    return weight.addmm_(a.T, b.T, alpha=scale)


def embedding_lora_delta(a: Tensor, b: Tensor, scale: float) -> Tensor:
    """Embedding LoRA: ``A`` is ``(r, vocab)``, ``B`` is ``(dim, r)``; delta is ``(vocab, dim)``."""
    return (b @ a).T * scale


def svd_truncated(weight: Tensor, drop: int) -> Tensor:
    """``weight`` without its ``drop`` smallest singular components (KaSA's base truncation:
    ``U[:, :k-r] diag(S[:k-r]) Vh[:k-r]``, PEFT's ``_truncate_base_weight``), fp32.

    Raises:
        ValueError: ``drop`` not below ``min(weight.shape)`` (PEFT refuses it too).
    """
    import torch

    keep = min(weight.shape) - drop
    if keep < 1:
        raise ValueError(f"KaSA drops {drop} singular values of a {tuple(weight.shape)} weight")
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    return (u[:, :keep] * s[:keep]) @ vh[:keep]


def dora_merge(
    weight: Tensor,
    a: Tensor,
    b: Tensor,
    scale: float,
    magnitude: Tensor,
    *,
    fan_in_fan_out: bool = False,
) -> Tensor:
    """DoRA: ``m * (W + s B A) / ||W + s B A||`` with the norm taken per output row.

    The norm is of the adapted weight, so stacking DoRA on an already merged weight uses the
    running weight, exactly as PEFT computes it at inference time.
    """
    adapted = _t(weight, fan_in_fan_out) + (b @ a) * scale
    norm = adapted.norm(p=2, dim=1)
    return _t(adapted * (magnitude / norm).unsqueeze(1), fan_in_fan_out)


def ia3_merge(weight: Tensor, vector: Tensor, *, fan_in_fan_out: bool = False) -> Tensor:
    """IA3: rows (``(out, 1)`` vector) or columns (``(1, in)``, feed-forward) scaled."""
    return weight * _t(vector, fan_in_fan_out)


def loha_delta(w1a: Tensor, w1b: Tensor, w2a: Tensor, w2b: Tensor, scale: float) -> Tensor:
    """LoHa: Hadamard product of two low-rank products, ``(W1a W1b) * (W2a W2b) * scale``."""
    return (w1a @ w1b) * (w2a @ w2b) * scale


def lokr_delta(w1: Tensor, w2: Tensor, scale: float, shape: tuple[int, ...]) -> Tensor:
    """LoKr: Kronecker product ``kron(W1, W2) * scale`` reshaped to the layer's weight."""
    import torch

    return (torch.kron(w1, w2) * scale).reshape(shape)


def adalora_delta(
    a: Tensor, b: Tensor, e: Tensor, scaling: float, ranknum: float, *, fan_in_fan_out: bool = False
) -> Tensor:
    """AdaLoRA: ``B (A * E) * scaling / (ranknum + 1e-5)``.

    ``ranknum`` is the rank the module was built with (``init_r``), not the triplets kept after
    pruning: see ``compose.peft_patterns.adalora_scaling``.
    """
    return _t(b @ (a * e) * scaling / (ranknum + 1e-5), fan_in_fan_out)


def vera_delta(
    shared_a: Tensor,
    shared_b: Tensor,
    lambda_d: Tensor,
    lambda_b: Tensor,
    out_features: int,
    in_features: int,
    *,
    fan_in_fan_out: bool = False,
) -> Tensor:
    """VeRA: ``(lambda_b * B[:out]) @ (lambda_d * A[:, :in])`` with the shared projections."""
    sliced_a = shared_a[:, :in_features]
    sliced_b = shared_b[:out_features, :]
    return _t(
        (lambda_b.unsqueeze(-1) * sliced_b) @ (lambda_d.unsqueeze(-1) * sliced_a), fan_in_fan_out
    )
