"""The fast scoring paths agree with the straightforward one: every sequence fed whole, alone,
unpadded (fp32), for every data kind and for models that take the cached-prompt path and
models that don't (prompt methods, other architectures)."""

from __future__ import annotations

import json

import pytest
import torch

from compose import evaluate
from compose.eval_data import read_eval_data
from compose.eval_prefix import caches_prefix, shared_prefix
from compose.evaluate import Span
from tests.compose.deploy.models import make_base
from tests.factories import METHODS

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "merged",
    "adapter",
    "ships",
    "llama",
    "cpp",
    "vllm",
    "serves",
]

BOUND = 1e-4
"""Per-choice log-likelihood (a sum over tokens, fp32) against the straightforward scoring."""


def _rows(kind: str, count: int = 11) -> list[dict]:
    import random

    rng = random.Random(7)
    rows = []
    for i in range(count):
        prompt = " ".join(rng.choices(WORDS, k=rng.randint(1, 9)))
        if kind == "text":
            rows.append({"text": prompt + " " + " ".join(rng.choices(WORDS, k=3))})
        elif kind == "generation":
            rows.append({"prompt": prompt, "target": " " + " ".join(rng.choices(WORDS, k=2))})
        else:
            choices = [" " + " ".join(rng.choices(WORDS, k=rng.randint(1, 4))) for _ in range(4)]
            if i % 3 == 0:  # no space: the choice's first piece may merge with the prompt's end
                choices[1] = "s " + choices[1].strip()
            if i % 4 == 1:  # a row with more choices than the others
                choices += [" fox", " lazy dog"]
            rows.append({"prompt": prompt, "choices": choices, "answer": i % 4})
    return rows


def _reference(model, spans: list[Span]) -> list[list[float]]:
    """Each span fed whole and alone (no padding, no cache): the scored tokens' fp32
    log-probabilities, counted from the end (prompt methods put virtual tokens in front)."""
    out = []
    for span in spans:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([span.ids])).logits[0, -len(span.ids) :]
        logp = torch.log_softmax(logits.float(), dim=-1)
        out.append([float(logp[t - 1, span.ids[t]]) for t in range(span.start, len(span.ids))])
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix")
    return {
        "llama": make_base(root / "llama", tokenizer="bpe"),
        "gpt2": make_base(root / "gpt2", "gpt2", tokenizer="bpe"),
    }


def _model(base, method: str | None, tmp_path):
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    if method is None:
        return model, tok
    torch.manual_seed(3)
    trained = get_peft_model(AutoModelForCausalLM.from_pretrained(base), METHODS[method](None))
    with torch.no_grad():  # fresh LoRA B is zero: perturb so the adapter changes the outputs
        for param in trained.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn_like(param))
    trained.save_pretrained(tmp_path / method)
    return PeftModel.from_pretrained(model, str(tmp_path / method)).eval(), tok


@pytest.mark.parametrize("kind", ["choice", "generation", "text"])
@pytest.mark.parametrize(
    "arch, method, cached",
    [
        ("llama", None, True),
        ("llama", "lora", True),
        ("llama", "ia3", True),
        ("llama", "prompt_tuning", False),
        ("llama", "prefix_tuning", False),
        ("gpt2", None, True),
    ],
)
def test_scores_equal_each_sequence_fed_whole(bases, tmp_path, kind, arch, method, cached):
    model, tok = _model(bases[arch], method, tmp_path)
    assert caches_prefix(model) is cached
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(kind)))
    data = read_eval_data(path)
    spans = evaluate.data_spans(tok, data)
    want = _reference(model, spans)
    metrics = [m for m in data.metrics if m != "exact_match"]
    for batch_size in (1, 3, 16):
        seen: list[int] = []
        got = evaluate.score(model, tok, data, metrics, batch_size=batch_size, progress=seen.append)
        assert sum(seen) == evaluate.sequences(data, metrics)
        if kind == "choice":
            flat = [total for row in got.choice_logprobs for total in row]
            assert len(flat) == len(want)
            for total, values in zip(flat, want, strict=True):
                assert total == pytest.approx(sum(values), abs=BOUND)
            whole = evaluate.score(model, tok, data, metrics, batch_size=batch_size,
                                   prefix_cache=False)  # fmt: skip
            for a, b in zip(got.choice_logprobs, whole.choice_logprobs, strict=True):
                assert a == pytest.approx(b, abs=BOUND)
        elif kind == "generation":
            expected = [sum(v) / len(v) for v in want]
            assert got.scores["target_logprob"] == pytest.approx(expected, abs=BOUND)
        else:
            expected = [-sum(v) / len(v) for v in want]
            assert got.scores["cross_entropy"] == pytest.approx(expected, abs=BOUND)


def test_shared_prefix_stops_where_a_choice_changes_the_prompts_tokens():
    spans = [Span(ids=[1, 5, 9, 42, 7], start=4), Span(ids=[1, 5, 9, 42, 8, 3], start=4)]
    assert shared_prefix(spans) == 3  # start - 1: the last prompt token is fed with the choice
    merged = [Span(ids=[1, 5, 9, 42, 7], start=4), Span(ids=[1, 5, 77, 3], start=3)]
    assert shared_prefix(merged) == 2  # the second choice merged into the prompt's 9
    assert shared_prefix([Span(ids=[1, 2], start=1), Span(ids=[1, 3], start=1)]) == 0


def test_the_cached_path_feeds_each_prompt_once(bases, tmp_path):
    """What makes it faster: the prompt tokens go through the model once per row, not once
    per choice (counted at the embedding layer)."""
    model, tok = _model(bases["llama"], "lora", tmp_path)
    path = tmp_path / "c.jsonl"
    rows = _rows("choice")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = read_eval_data(path)
    fed: list[int] = []
    embed = model.get_base_model().get_input_embeddings()
    hook = embed.register_forward_hook(lambda _m, args, _o: fed.append(args[0].numel()))
    try:
        evaluate.score(model, tok, data, ["accuracy"], batch_size=1)
        cached = sum(fed)
        fed.clear()
        evaluate.score(model, tok, data, ["accuracy"], batch_size=1, prefix_cache=False)
        whole = sum(fed)
    finally:
        hook.remove()
    spans = evaluate.data_spans(tok, data)
    assert whole == sum(len(s.ids) - 1 for s in spans)  # each sequence alone, last token unfed
    expected, first = 0, 0
    for row in data.rows:  # one row a batch: its prompt once, its choices padded to the longest
        group = spans[first : first + len(row.choices)]
        first += len(row.choices)
        p = shared_prefix(group)
        expected += p + len(group) * max(len(s.ids) - 1 - p for s in group)
    assert cached == expected
    assert cached < 0.7 * whole
