"""Scoring continuations that share a prompt: the prompt once, every continuation from its cache.

A multiple-choice row is scored as one sequence per choice (``prompt + choice``, see
``compose.evaluate``), and those sequences share their first tokens: the prompt's. Feeding each
of them whole computes the prompt once per choice. Here the shared prefix runs once per row
(``use_cache``), its KV cache is repeated for each of the row's choices, and only the tokens
after it are fed, with the positions they have in the whole sequence. The inputs are the same
token ids as the straightforward scoring's, so the log-probabilities are the same up to the
order of floating-point sums (tests/compose/test_eval_prefix.py compares both, fp32, within
1e-4 per choice).

The shared prefix of a row is the longest common prefix of its sequences' ids, cut so that
every scored token's prediction comes from the fed part: at most ``start - 1`` tokens of
each sequence. (Usually that is the prompt's tokens less one; a choice whose first token
merges with the prompt's last one shortens it.) A row whose sequences share nothing is
scored the straightforward way.

Batches: prompts right-padded and fed without a mask (padding never precedes a real token
under the causal mask, so no position attends to a pad and every cached value is finite);
the continuations then attend to their own row's prompt columns only (an attention mask over
cache + new tokens), at positions ``prefix + t``. Only models whose cache this can drive take
this path (``caches_prefix``): prompt-learning adapters put virtual tokens or a cache of their
own in front, and ensembles run their members themselves, so those are scored whole.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compose.evaluate import Progress, Span


def caches_prefix(model: Any) -> bool:
    """Whether ``model`` can score continuations from a cached prefix: a transformers causal
    LM (or a PEFT model of a method that changes weights, not inputs, around one) whose forward
    takes a cache, ``position_ids``, ``attention_mask`` and ``logits_to_keep``."""
    return _cache_argument(model) is not None


def _cache_argument(model: Any) -> str | None:
    """The name ``model``'s forward takes its KV cache by (transformers 5.24 renamed
    ``past_key_values`` to ``cache``; its outputs name it the same), or None if it can't
    score from a cached prefix (see ``caches_prefix``)."""
    from transformers import PreTrainedModel

    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a core dependency
        PeftModel = ()  # type: ignore[assignment,misc]
    inner = model
    while isinstance(inner, PeftModel):
        if any(config.is_prompt_learning for config in inner.peft_config.values()):
            return None
        inner = inner.get_base_model()
    if not isinstance(inner, PreTrainedModel) or inner.config.is_encoder_decoder:
        return None
    if getattr(inner, "adapters_config", None) is not None:
        return None  # AdapterHub's runtime: its prefix tuning keeps a cache of its own
    parameters = inspect.signature(inner.forward).parameters
    if not all(name in parameters for name in ("position_ids", "attention_mask", "logits_to_keep")):
        return None
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def shared_prefix(spans: Sequence[Span]) -> int:
    """How many leading tokens ``spans`` share and can take from a cache: their longest
    common prefix, at most ``start - 1`` of each (so every scored token is predicted from a
    fed position). 0 when they share nothing usable."""
    limit = min(span.start - 1 for span in spans)
    first = spans[0].ids
    length = 0
    while length < limit and all(span.ids[length] == first[length] for span in spans[1:]):
        length += 1
    return length


def prefix_logprobs(
    model: Any,
    spans: Sequence[Span],
    groups: Sequence[Sequence[int]],
    *,
    batch_size: int,
    device: Any,
    pad_id: int,
    progress: Progress | None,
) -> list[list[float]]:
    """For each span, the log-probability of each scored token given the tokens before it;
    spans of one group (a row's choices) share their prefix's forward pass.

    ``batch_size`` groups go through one prompt pass and one continuation pass. Groups that
    share no prefix are scored whole (``compose.evaluate._logprobs``).
    """
    from compose.evaluate import _logprobs

    out: list[list[float]] = [[] for _ in spans]
    cached: list[tuple[Sequence[int], int]] = []
    whole: list[int] = []
    for group in groups:
        length = shared_prefix([spans[i] for i in group]) if len(group) > 1 else 0
        if length:
            cached.append((group, length))
        else:
            whole.extend(group)
    if whole:
        scored = _logprobs(
            model, [spans[i] for i in whole],
            batch_size=batch_size, device=device, pad_id=pad_id, progress=progress,
        )  # fmt: skip
        for index, values in zip(whole, scored, strict=True):
            out[index] = values
    # Longest prompts first, so a batch's prompts (and so its continuations' cache) are of
    # similar lengths: little padding.
    cached.sort(key=lambda item: (-item[1], -max(len(spans[i].ids) for i in item[0])))
    for first in range(0, len(cached), batch_size):
        batch = cached[first : first + batch_size]
        _score_batch(model, spans, batch, device, pad_id, out)
        if progress:
            progress(sum(len(group) for group, _ in batch))
    return out


def _score_batch(
    model: Any,
    spans: Sequence[Span],
    batch: Sequence[tuple[Sequence[int], int]],
    device: Any,
    pad_id: int,
    out: list[list[float]],
) -> None:
    import torch

    from compose.evaluate import _last_logits

    name = _cache_argument(model)
    assert name is not None, "prefix_logprobs needs a model that caches_prefix()"
    width = max(length for _, length in batch)
    prompts = torch.full((len(batch), width), pad_id, dtype=torch.long)
    for row, (group, length) in enumerate(batch):
        prompts[row, :length] = torch.tensor(spans[group[0]].ids[:length])
    with torch.no_grad():
        # Only the cache is wanted; one column of logits is the least the LM head computes.
        cache = getattr(model(input_ids=prompts.to(device), use_cache=True, logits_to_keep=1), name)
    members = [(row, index) for row, (group, _) in enumerate(batch) for index in group]
    fed = [spans[index].ids[batch[row][1] : -1] for row, index in members]
    span_width = max(len(tokens) for tokens in fed)
    # The first column any member scores: its ``start - 1``, counted from its prefix.
    lead = min(spans[index].start - 1 - batch[row][1] for row, index in members)
    keep = span_width - lead
    ids = torch.full((len(members), span_width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(members), width + span_width), dtype=torch.long)
    positions = torch.zeros((len(members), span_width), dtype=torch.long)
    targets = torch.zeros((len(members), keep), dtype=torch.long)
    for member, ((row, index), tokens) in enumerate(zip(members, fed, strict=True)):
        length = batch[row][1]
        span = spans[index]
        ids[member, : len(tokens)] = torch.tensor(tokens)
        mask[member, :length] = 1  # the row's own prompt columns; its padding stays unseen
        mask[member, width:] = 1  # trailing padding is causal-after every scored column
        positions[member] = torch.arange(length, length + span_width)
        first_col = span.start - 1 - length - lead
        scored = span.ids[span.start :]
        targets[member, first_col : first_col + len(scored)] = torch.tensor(scored)
    cache.reorder_cache(torch.tensor([row for row, _ in members], device=device))
    logits = _last_logits(
        model,
        ids.to(device),
        keep,
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        **{name: cache},
    )
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(2, targets.to(logp.device).unsqueeze(2)).squeeze(2)
    values = picked.double().cpu().tolist()
    for member, (row, index) in enumerate(members):
        span = spans[index]
        first_col = span.start - 1 - batch[row][1] - lead
        out[index] = values[member][first_col : first_col + len(span.ids) - span.start]
