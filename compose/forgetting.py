"""Forgetting: how much worse (or better) an adapter predicts general text than its base.

What PEFT's method comparison calls forgetting: the change in per-token cross-entropy on a
general text, adapter minus base, on exactly the same tokens. Positive means the adapter
forgot some of what the base knew.

- Each JSONL row ``{"text": ...}`` is one document. A document longer than the model's window
  is cut into windows of ``window`` tokens that overlap by one token, so every token after the
  document's first is scored exactly once, given the tokens before it in its window.
- The value is a ratio of sums over all scored tokens (long documents weigh more, as in a
  corpus perplexity); its 95% interval comes from resampling whole documents
  (``compose.eval_stats.paired_token_delta``), since tokens of one document are not
  independent draws.

No file I/O; scoring goes through ``compose.evaluate.scored_distributions`` (virtual tokens of
prompt methods handled there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from compose.eval_data import EvalData


@dataclass(frozen=True)
class DocumentLosses:
    """Per document: the summed cross-entropy (nats) of its scored tokens and their count."""

    sums: list[float]
    tokens: list[int]

    @property
    def cross_entropy(self) -> float:
        return math.fsum(self.sums) / sum(self.tokens)


def _windows(ids: list[int], window: int) -> list[list[int]]:
    if len(ids) <= window:
        return [ids]
    step = window - 1  # one token of overlap: the next window's context token
    return [ids[first : first + window] for first in range(0, len(ids) - 1, step)]


def document_losses(
    model: Any,
    tokenizer: Any,
    data: EvalData,
    *,
    window: int,
    batch_size: int = 8,
    device: Any = "cpu",
    progress: Any = None,
) -> DocumentLosses:
    """Score every token of each text row after its first (see the module docstring).

    Raises:
        ValueError: ``window`` below 2.
        InvalidData: a row of fewer than 2 tokens (naming its line).
    """
    import torch

    from compose.evaluate import Span, pad_token, scored_distributions, text_ids

    if window < 2:
        raise ValueError(f"a scoring window needs at least 2 tokens, got {window}")
    spans, owners = [], []
    for index, row in enumerate(data.rows):
        ids = text_ids(tokenizer, data, row)
        for piece in _windows(ids, window):
            if len(piece) >= 2:
                spans.append(Span(ids=piece, start=1))
                owners.append(index)
    sums = [0.0] * len(data.rows)
    tokens = [0] * len(data.rows)
    for owner, (span, rows) in zip(
        owners,
        scored_distributions(
            model,
            spans,
            batch_size=batch_size,
            device=device,
            pad_id=pad_token(tokenizer),
            progress=progress,
        ),
        strict=True,
    ):
        targets = torch.tensor(span.ids[span.start :], device=rows.device)
        logp = rows.gather(1, targets.unsqueeze(1)).squeeze(1).double()
        sums[owner] += -float(logp.sum())
        tokens[owner] += len(span.ids) - span.start
    return DocumentLosses(sums=sums, tokens=tokens)


def forgetting(adapter: DocumentLosses, base: DocumentLosses, *, seed: int = 0) -> dict[str, Any]:
    """The forgetting result of an eval record: the paired per-token change with its interval.

    Returns:
        ``{"value", "ci95", "stderr", "p_value", "documents", "tokens", "cross_entropy",
        "base_cross_entropy", "higher_is_better": False}`` (value = adapter minus base, nats
        per token).
    """
    from compose.eval_stats import paired_token_delta

    if adapter.tokens != base.tokens:
        raise ValueError("adapter and base were scored on different tokens")
    d = paired_token_delta(adapter.sums, base.sums, adapter.tokens, seed=seed)
    return {
        "value": d.value,
        "ci95": list(d.ci95),
        "stderr": d.stderr,
        "p_value": d.p_value,
        "documents": d.n,
        "tokens": sum(adapter.tokens),
        "cross_entropy": adapter.cross_entropy,
        "base_cross_entropy": base.cross_entropy,
        "higher_is_better": False,
    }


def default_window(model_config: Any, cap: int = 1024) -> int:
    """The scoring window: the model's context length, capped (attention cost is quadratic)."""
    length = getattr(model_config, "max_position_embeddings", None) or cap
    return max(2, min(int(length), cap))


def pair_rows(adapter: DocumentLosses, base: DocumentLosses) -> Sequence[dict[str, Any]]:
    """Per-document rows for the record's results blob."""
    return [
        {"row": i, "tokens": n, "cross_entropy_sum": a, "base_cross_entropy_sum": b}
        for i, (a, b, n) in enumerate(zip(adapter.sums, base.sums, adapter.tokens, strict=True))
    ]
