"""Output-space similarity: how alike two models' next-token distributions are on the same data.

Works for any model the evaluation runs (every PEFT method, prompt methods included, stacks,
ensembles), since it only needs log-probabilities at the scored positions of the data
(``compose.evaluate.data_spans``: a text's tokens after the first, a target's or a choice's
tokens). For each pair (i, j):

- ``kl[i][j]``: the mean over positions of KL(p_i || p_j) = sum_v p_i(v) (log p_i(v) - log
  p_j(v)), in nats (not symmetric: row i is the reference);
- ``top1_agreement[i][j]``: the share of positions where both put their highest probability on
  the same token.

Each model's log-probabilities are written once to a float32 memory-mapped file
(positions x vocabulary) in a scratch folder, then the pairs are compared in chunks of
positions, so memory stays at a chunk of two models whatever the number of models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK = 256
"""Positions compared at once (two chunks of vocab-wide rows in memory)."""


@dataclass(frozen=True)
class Distributions:
    """One model's log-probabilities at the data's scored positions, on disk."""

    path: Path
    positions: int
    vocab: int

    def open(self) -> Any:
        import numpy as np

        return np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.positions, self.vocab))


def write_distributions(
    model: Any,
    spans: Sequence[Any],
    path: Path,
    *,
    max_positions: int,
    batch_size: int,
    device: Any,
    pad_id: int,
) -> Distributions:
    """Run ``model`` over ``spans`` and store its log-probabilities at the first
    ``max_positions`` scored positions in ``path``."""
    from compose.evaluate import scored_distributions

    rows = []
    total = 0
    for _, logp in scored_distributions(
        model, spans, batch_size=batch_size, device=device, pad_id=pad_id
    ):
        take = logp[: max_positions - total].cpu().numpy()
        rows.append(take)
        total += take.shape[0]
        if total >= max_positions:
            break
    import numpy as np

    vocab = rows[0].shape[1]
    out = np.memmap(path, dtype=np.float32, mode="w+", shape=(total, vocab))
    start = 0
    for block in rows:
        out[start : start + block.shape[0]] = block
        start += block.shape[0]
    out.flush()
    del out
    return Distributions(path=path, positions=total, vocab=vocab)


def compare_pair(a: Distributions, b: Distributions) -> tuple[float | None, float]:
    """(mean KL(a || b) in nats, top-1 agreement) over the shared positions. The KL is None
    when it is infinite (b gives probability 0 to a token a does not: a voting ensemble)."""
    import torch

    if (a.positions, a.vocab) != (b.positions, b.vocab):
        raise ValueError(
            f"different positions or vocabularies: {a.positions}x{a.vocab} vs"
            f" {b.positions}x{b.vocab}"
        )
    first, second = a.open(), b.open()
    kl_total = 0.0
    agree = 0
    for start in range(0, a.positions, CHUNK):
        la = torch.from_numpy(first[start : start + CHUNK].copy()).double()
        lb = torch.from_numpy(second[start : start + CHUNK].copy()).double()
        pa = la.exp()
        terms = torch.where(pa > 0, pa * (la - lb), torch.zeros_like(pa))
        kl_total += float(terms.sum())
        agree += int((la.argmax(-1) == lb.argmax(-1)).sum())
    kl = kl_total / a.positions
    return (kl if math.isfinite(kl) else None), agree / a.positions


def similarity_matrices(
    models: Sequence[Distributions], base: Distributions | None = None
) -> dict[str, Any]:
    """``kl`` and ``top1_agreement`` matrices over ``models`` (and each against ``base``)."""
    n = len(models)
    kl: list[list[float | None]] = [[0.0 if i == j else None for j in range(n)] for i in range(n)]
    agreement: list[list[float]] = [[1.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            kl[i][j], agreement[i][j] = compare_pair(models[i], models[j])
    out: dict[str, Any] = {"kl": kl, "top1_agreement": agreement}
    if base is not None:
        pairs = [compare_pair(m, base) for m in models]
        out["kl_to_base"] = [p[0] for p in pairs]
        out["top1_agreement_with_base"] = [p[1] for p in pairs]
    return out
