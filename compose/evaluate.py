"""Scoring a causal LM on evaluation data: one score per example and metric.

The model is anything that maps ``input_ids`` + ``attention_mask`` to ``.logits`` (a
transformers model, a ``PeftModel``, the base with its adapter disabled); generation uses its
``generate``. Tokenization follows one rule for every kind, the one lm-evaluation-harness uses
for log-likelihoods:

- ``text``: the tokenized text (tokenizer defaults, so a BOS where the tokenizer adds one);
  every token after the first is scored given the ones before it. The per-example score is
  that example's mean cross-entropy (nats per token).
- ``prompt`` + continuation (a target or a choice): ``whole = tok(prompt + continuation)``,
  ``ctx = tok(prompt)``; the continuation's tokens are ``whole[len(ctx):]``, each scored given
  everything before it. A prompt with no tokens (``""`` with a tokenizer that adds no BOS)
  leaves nothing to condition the first token on: as lm-evaluation-harness does for an empty
  context, the prefix token (the BOS, else the EOS) is put before ``tok(continuation)`` and
  every continuation token is scored after it.
- ``exact_match``: greedy decoding from ``tok(prompt)``, at most as many new tokens as the
  target has plus ``extra_new_tokens``, cut at the first newline or EOS, stripped, compared with
  the stripped target. A prompt with no tokens is refused (``InvalidData`` naming its line):
  generation needs at least one input token, and generating from a bare document separator
  would score what the model says unprompted, which no exact-match task means; with a
  tokenizer that adds a BOS, ``tok("")`` is the BOS and both metrics condition on it.
- ``text`` rows of one token have nothing to score (their only token is context) and are
  refused the same way.

Batches are right-padded for scoring (padding never precedes a scored token under a causal
mask, so no attention mask is passed) and left-padded for generation. A multiple-choice row's
sequences share the prompt's tokens: the prompt is fed once and each choice scored from its
KV cache (``compose.eval_prefix``) where the model allows it; the same ids either way. All
log-probabilities are computed in fp32 (``log_softmax`` of the logits cast to fp32). No file I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from compose.eval_data import EvalData, Row
from compose.eval_prefix import caches_prefix, prefix_logprobs
from schemas.errors import InvalidData

if TYPE_CHECKING:
    import torch


@dataclass
class Scored:
    """Per-example scores of one model on one data file, and what scoring them cost."""

    scores: dict[str, list[float]]
    """Metric -> one score per example (for ``perplexity``: the example's cross-entropy)."""
    predictions: list[str] = field(default_factory=list)
    """Greedy outputs, for ``exact_match``."""
    choice_logprobs: list[list[float]] = field(default_factory=list)
    """For ``choice`` data: per example, each choice's summed log-probability (what
    lm-evaluation-harness logs as a multiple-choice task's per-choice log-likelihood)."""
    tokens_scored: int = 0


@dataclass(frozen=True)
class Span:
    """One sequence to score: its token ids and which positions count."""

    ids: list[int]
    start: int  # first scored token index (>= 1)


def where(data: EvalData, row: Row) -> str:
    """``data.jsonl line 3``: how a message names a row."""
    return f"{data.path.name} line {row.line}"


def prefix_token(tokenizer: Any) -> int | None:
    """The token an empty context stands for: the BOS, else the EOS (lm-evaluation-harness's
    ``prefix_token_id``), or None when the tokenizer has neither."""
    for token in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token is not None:
            return int(token)
    return None


def _spans_for_continuations(
    tokenizer: Any, prompt: str, continuations: Sequence[str], row_name: str
) -> list[Span]:
    ctx = tokenizer(prompt)["input_ids"]
    prefix: list[int] = []
    if not ctx:  # lm-eval's rule for an empty context: the prefix token stands for it
        token = prefix_token(tokenizer)
        if token is None:
            raise InvalidData(
                f'{row_name}: "prompt" has no tokens and the tokenizer has no BOS or EOS token'
                " to score the continuation after; give a prompt",
                field="prompt",
            )
        prefix = [token]
    spans = []
    for continuation in continuations:
        if prefix:
            whole = prefix + tokenizer(continuation, add_special_tokens=False)["input_ids"]
            start = 1
        else:
            whole = tokenizer(prompt + continuation)["input_ids"]
            start = len(ctx)
        if start >= len(whole):  # the continuation vanished into the prompt's tokens
            start = len(whole) - 1
        spans.append(Span(ids=whole, start=start))
    return spans


def text_ids(tokenizer: Any, data: EvalData, row: Row) -> list[int]:
    """A text row's token ids; refused when there is no token after the first to score."""
    ids: list[int] = tokenizer(row.text)["input_ids"]
    if len(ids) < 2:
        raise InvalidData(
            f'{where(data, row)}: "text" has {len(ids)} token{"" if len(ids) == 1 else "s"},'
            " and a text row's first token is only context: nothing is left to score (a text"
            " row needs at least 2 tokens)",
            path=str(data.path),
            field="text",
        )
    return ids


def check_prompts(tokenizer: Any, data: EvalData, metrics: Sequence[str]) -> None:
    """Refuse, before anything is scored, a row ``exact_match`` cannot generate from: a
    prompt with no tokens (see the module docstring)."""
    if data.kind != "generation" or "exact_match" not in metrics:
        return
    for row in data.rows:
        if not tokenizer(row.prompt)["input_ids"]:
            raise InvalidData(
                f'{where(data, row)}: "prompt" has no tokens (the tokenizer adds no BOS), so'
                " exact_match has nothing to generate from; give a prompt, or score only"
                " --metric target_logprob",
                path=str(data.path),
                field="prompt",
            )


def data_spans(tokenizer: Any, data: EvalData) -> list[Span]:
    """The sequences scoring runs for ``data``'s log-likelihoods, in order: one per text row,
    one per prompt + target, one per prompt + choice (choices of a row consecutive).

    Raises:
        InvalidData: a text row of one token (naming its line).
    """
    spans: list[Span] = []
    for row in data.rows:
        if data.kind == "text":
            spans.append(Span(ids=text_ids(tokenizer, data, row), start=1))
        elif data.kind == "generation":
            spans += _spans_for_continuations(
                tokenizer, row.prompt or "", [row.target or ""], where(data, row)
            )
        else:
            spans += _spans_for_continuations(
                tokenizer, row.prompt or "", row.choices, where(data, row)
            )
    return spans


Progress = Callable[[int], None]
"""Called with the number of sequences just finished (scored or generated)."""


def scored_distributions(
    model: Any,
    spans: Sequence[Span],
    *,
    batch_size: int,
    device: Any,
    pad_id: int,
    progress: Progress | None = None,
) -> Iterator[tuple[Span, torch.Tensor]]:
    """For each span, in order: the model's fp32 log-probabilities over the vocabulary at the
    positions that predict its scored tokens, ``(len(ids) - start, vocab)``.

    Prompt-learning models (prompt tuning, P-tuning through PEFT) return logits for their
    virtual tokens too, in front of the input's: those leading positions are dropped, so row
    ``t`` always predicts ``ids[start + t]``.
    """
    import torch

    for first in range(0, len(spans), batch_size):
        batch = spans[first : first + batch_size]
        width = max(len(s.ids) for s in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, span in enumerate(batch):
            ids[i, : len(span.ids)] = torch.tensor(span.ids)
            mask[i, : len(span.ids)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logits = logits[:, logits.shape[1] - width :]  # drop virtual-token positions
        logp = torch.log_softmax(logits.float(), dim=-1)
        for i, span in enumerate(batch):
            yield span, logp[i, span.start - 1 : len(span.ids) - 1]
        if progress:
            progress(len(batch))


def _logprobs(
    model: Any,
    spans: Sequence[Span],
    *,
    batch_size: int,
    device: Any,
    pad_id: int,
    progress: Progress | None,
) -> list[list[float]]:
    """For each span, the log-probability of each scored token given the tokens before it.

    What keeps it fast: sequences are batched longest first (little padding); a sequence's last
    token is not fed (nothing after it is scored); right padding goes without an attention
    mask (under the causal mask no scored position sees a later one, and SDPA keeps its causal
    kernel); only the columns some span scores go through the LM head and the log-softmax
    (``logits_to_keep``: the LM head of a 128k vocabulary costs a fifth of a 1B model's
    forward); one gather and one device-to-host copy per batch.
    Columns are counted from the end, so virtual tokens that a prompt-learning adapter puts in
    front of the inputs (its logits include them) shift nothing.
    """
    import torch

    order = sorted(range(len(spans)), key=lambda i: (-len(spans[i].ids), spans[i].ids))
    out: list[list[float]] = [[] for _ in spans]
    for first in range(0, len(order), batch_size):
        members = order[first : first + batch_size]
        batch = [spans[i] for i in members]
        width = max(len(s.ids) for s in batch) - 1
        keep = width - min(s.start for s in batch) + 1  # columns start-1 .. width-1
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        targets = torch.zeros((len(batch), keep), dtype=torch.long)
        for row, span in enumerate(batch):
            ids[row, : len(span.ids) - 1] = torch.tensor(span.ids[:-1])
            # the token scored at column c is the one after it: ids[c + 1]
            first_col = span.start - 1 - (width - keep)
            scored = span.ids[span.start :]
            targets[row, first_col : first_col + len(scored)] = torch.tensor(scored)
        logits = _last_logits(model, ids.to(device), keep)
        logp = torch.log_softmax(logits.float(), dim=-1)
        picked = logp.gather(2, targets.to(logp.device).unsqueeze(2)).squeeze(2)
        values = picked.double().cpu().tolist()
        for row, (index, span) in enumerate(zip(members, batch, strict=True)):
            first_col = span.start - 1 - (width - keep)
            out[index] = values[row][first_col : first_col + len(span.ids) - span.start]
        if progress:
            progress(len(batch))
    return out


def _last_logits(model: Any, ids: torch.Tensor, keep: int, **inputs: Any) -> torch.Tensor:
    """The logits of the last ``keep`` columns; the LM head runs on those alone where the
    model takes ``logits_to_keep`` (transformers' causal LMs and PEFT models around them).
    ``inputs``: more forward arguments (a cache, its mask and positions)."""
    import torch

    with torch.no_grad():
        try:
            logits = model(input_ids=ids, logits_to_keep=keep, **inputs).logits
        except TypeError:  # a model without the argument: compute all, keep the tail
            logits = model(input_ids=ids, **inputs).logits
    return logits[:, -keep:]


def _greedy(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Row],
    *,
    batch_size: int,
    device: Any,
    pad_id: int,
    extra_new_tokens: int,
    progress: Progress | None,
) -> list[str]:
    import torch

    predictions: list[str] = []
    eos = tokenizer.eos_token_id
    for first in range(0, len(rows), batch_size):
        batch = rows[first : first + batch_size]
        prompts = [tokenizer(r.prompt)["input_ids"] for r in batch]
        budget = max(len(tokenizer(r.target, add_special_tokens=False)["input_ids"]) for r in batch)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every prompt ends at the same column
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        with torch.no_grad():
            generated = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=budget + extra_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_id,
                eos_token_id=eos,
            )
        for row in generated[:, width:].tolist():
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            text = tokenizer.decode(row, skip_special_tokens=True)
            predictions.append(text.split("\n", 1)[0].strip())
        if progress:
            progress(len(batch))
    return predictions


def score(
    model: Any,
    tokenizer: Any,
    data: EvalData,
    metrics: Sequence[str],
    *,
    batch_size: int = 8,
    device: Any = "cpu",
    extra_new_tokens: int = 16,
    progress: Progress | None = None,
    prefix_cache: bool = True,
) -> Scored:
    """Score ``model`` on every row of ``data`` for ``metrics`` (all of the data's kind).

    Args:
        model: maps ``input_ids``/``attention_mask`` to ``.logits``; ``generate`` for
            ``exact_match``.
        tokenizer: the base's tokenizer (a transformers tokenizer).
        metrics: a subset of ``data.metrics``.
        progress: called after each batch with the number of sequences it finished; the total
            is ``sequences(data, metrics)``.
        prefix_cache: score a row's choices from one pass over their shared prompt where the
            model allows it (``compose.eval_prefix``); False feeds each choice's sequence
            whole (the same numbers up to float rounding; for tests and comparisons).

    Returns:
        ``Scored``: per-example scores per metric, greedy predictions for ``exact_match``.

    Raises:
        InvalidData: a row that cannot be scored once tokenized (a text row of one token, an
            empty prompt for ``exact_match``), before anything runs through the model.
    """
    check_prompts(tokenizer, data, metrics)
    common: dict[str, Any] = dict(
        batch_size=batch_size, device=device, pad_id=pad_token(tokenizer), progress=progress
    )
    scores: dict[str, list[float]] = {m: [] for m in metrics}
    result = Scored(scores=scores)
    rows = data.rows
    if data.kind == "text":
        for lp in _logprobs(model, data_spans(tokenizer, data), **common):
            ce = -math.fsum(lp) / len(lp)
            for name in metrics:  # perplexity is derived from the mean cross-entropy
                scores[name].append(ce)
            result.tokens_scored += len(lp)
    elif data.kind == "generation":
        if "target_logprob" in metrics:
            for lp in _logprobs(model, data_spans(tokenizer, data), **common):
                scores["target_logprob"].append(math.fsum(lp) / len(lp))
                result.tokens_scored += len(lp)
        if "exact_match" in metrics:
            result.predictions = _greedy(
                model, tokenizer, rows, extra_new_tokens=extra_new_tokens, **common
            )
            scores["exact_match"] = [
                1.0 if p == (r.target or "").strip() else 0.0
                for p, r in zip(result.predictions, rows, strict=True)
            ]
    else:
        owners = [index for index, row in enumerate(rows) for _ in row.choices]
        spans = data_spans(tokenizer, data)
        if prefix_cache and caches_prefix(model):  # each row's prompt once (eval_prefix)
            groups, first = [], 0
            for row in rows:
                groups.append(range(first, first + len(row.choices)))
                first += len(row.choices)
            per_choice = prefix_logprobs(model, spans, groups, **common)
        else:
            per_choice = _logprobs(model, spans, **common)
        grouped: list[list[list[float]]] = [[] for _ in rows]
        for owner, lp in zip(owners, per_choice, strict=True):
            grouped[owner].append(lp)
            result.tokens_scored += len(lp)
        for row, choices in zip(rows, grouped, strict=True):
            total = [math.fsum(lp) for lp in choices]
            result.choice_logprobs.append(total)
            per_token = [math.fsum(lp) / len(lp) for lp in choices]
            if "accuracy" in metrics:
                scores["accuracy"].append(1.0 if _argmax(total) == row.answer else 0.0)
            if "accuracy_norm" in metrics:
                scores["accuracy_norm"].append(1.0 if _argmax(per_token) == row.answer else 0.0)
    return result


def pad_token(tokenizer: Any) -> int:
    """The id batches are padded with: the tokenizer's pad token, else EOS, else 0 (padded
    positions are masked, so any id will do)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.eos_token_id) if tokenizer.eos_token_id is not None else 0


def sequences(data: EvalData, metrics: Sequence[str]) -> int:
    """How many sequences ``score`` runs through the model: the total its progress reports."""
    if data.kind == "choice":
        return sum(len(r.choices) for r in data.rows)
    if data.kind == "generation":
        return len(data.rows) * sum(m in metrics for m in ("target_logprob", "exact_match"))
    return len(data.rows)


def _argmax(values: Sequence[float]) -> int:
    """Index of the largest value; ties go to the first (as ``torch.argmax`` does)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def aggregate(metric: str, per_example: Sequence[float]) -> float:
    """The metric's value from its per-example scores: the mean, except ``perplexity``, which is
    ``exp`` of the mean cross-entropy (so its interval is ``exp`` of the cross-entropy's)."""
    mean = math.fsum(per_example) / len(per_example)
    return math.exp(mean) if metric == "perplexity" else mean


def device_for(requested: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is refused."""
    import torch

    from schemas.errors import InvalidArgument

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument("--device cuda: no CUDA device is available (use --device cpu)")
    return torch.device(requested)
