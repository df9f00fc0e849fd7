"""compose.evaluate and compose.eval_data: scores equal a direct per-example computation with the
real model (PEFT adapter loaded), bad files give one message naming the line and field."""

from __future__ import annotations

import json
import math

import pytest
import torch

from compose import evaluate
from compose.eval_data import read_eval_data
from schemas.errors import InvalidData
from tests.compose.deploy.models import make_adapter, make_base
from tests.numerics import argmax_is


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory):
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("eval")
    base = make_base(root / "base", tokenizer="bpe")
    adapter = make_adapter(
        root / "lora",
        base,
        LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        scale=0.2,
    )
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter)).eval(), AutoTokenizer.from_pretrained(
        base
    )


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _direct_logprob(model, ids, start):
    """Sum and count of log p(ids[t] | ids[:t]) for t >= start, one sequence, no padding."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    values = [float(logp[t - 1, ids[t]]) for t in range(start, len(ids))]
    return sum(values), len(values)


TEXTS = ["the quick brown fox", "a merged adapter ships to llama cpp", "vllm serves many loras"]


def test_text_cross_entropy_equals_a_direct_forward(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    data = read_eval_data(_write(tmp_path / "t.jsonl", [{"text": t} for t in TEXTS]))
    assert data.kind == "text" and data.metrics == ("cross_entropy", "perplexity")
    got = evaluate.score(model, tok, data, data.metrics, batch_size=2)
    for text, ce in zip(TEXTS, got.scores["cross_entropy"], strict=True):
        total, count = _direct_logprob(model, tok(text)["input_ids"], 1)
        assert ce == pytest.approx(-total / count, abs=1e-5)
    assert got.scores["perplexity"] == got.scores["cross_entropy"]
    mean_ce = sum(got.scores["cross_entropy"]) / 3
    assert evaluate.aggregate("perplexity", got.scores["perplexity"]) == pytest.approx(
        math.exp(mean_ce)
    )


def test_choice_accuracy_follows_the_summed_logprob(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    rows = [
        {"prompt": "the quick brown", "choices": [" fox", " dog", " lazy base"], "answer": 0},
        {"prompt": "vllm serves", "choices": [" many loras", " bytes"], "answer": " bytes"},
    ]
    data = read_eval_data(_write(tmp_path / "c.jsonl", rows))
    got = evaluate.score(model, tok, data, data.metrics, batch_size=3)
    for row, acc, acc_norm in zip(
        data.rows, got.scores["accuracy"], got.scores["accuracy_norm"], strict=True
    ):
        ctx = len(tok(row.prompt)["input_ids"])
        sums, means = [], []
        for choice in row.choices:
            total, count = _direct_logprob(model, tok(row.prompt + choice)["input_ids"], ctx)
            sums.append(total)
            means.append(total / count)
        # Batched (padded) scoring agrees with the direct pass within rounding (1e-5 per
        # token), so its pick is a choice within that of the best: exact where it decides.
        assert acc in argmax_is(sums, row.answer, 1e-4)
        assert acc_norm in argmax_is(means, row.answer, 1e-4)
    assert data.rows[1].answer == 1  # a text answer is resolved to its index


def test_target_logprob_and_exact_match(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    prompt = "the quick brown"
    with torch.no_grad():
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        greedy = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)[0, ids.shape[1] :]
    # The model's own greedy continuation is an exact match; another target is not.
    own = tok.decode(greedy.tolist(), skip_special_tokens=True).split("\n")[0]
    rows = [{"prompt": prompt, "target": own}, {"prompt": prompt, "target": " zebra crossing"}]
    data = read_eval_data(_write(tmp_path / "g.jsonl", rows))
    got = evaluate.score(model, tok, data, data.metrics, batch_size=1, extra_new_tokens=0)
    assert got.predictions[0] == own.strip()
    assert got.scores["exact_match"] == [1.0, 0.0]
    ctx = len(tok(prompt)["input_ids"])
    total, count = _direct_logprob(model, tok(prompt + " zebra crossing")["input_ids"], ctx)
    assert got.scores["target_logprob"][1] == pytest.approx(total / count, abs=1e-5)


def test_batched_scores_equal_unbatched(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    data = read_eval_data(_write(tmp_path / "t.jsonl", [{"text": t} for t in TEXTS]))
    one = evaluate.score(model, tok, data, ("cross_entropy",), batch_size=1)
    three = evaluate.score(model, tok, data, ("cross_entropy",), batch_size=3)
    assert three.scores["cross_entropy"] == pytest.approx(one.scores["cross_entropy"], abs=1e-5)
    seen = []
    evaluate.score(model, tok, data, ("cross_entropy",), batch_size=2, progress=seen.append)
    assert seen == [2, 1] and sum(seen) == evaluate.sequences(data, ("cross_entropy",))


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "a"}\n{"prompt": "p", "target": "t"}\n',
         "x.jsonl line 2: a generation row in a file of text rows (one kind per file)"),
        ('{"prompt": "p", "target": 3}\n', 'x.jsonl line 1: "target" must be a string, got int'),
        ('{"text": "a"}\n\nnot json\n', "x.jsonl line 3: not JSON (Expecting value)"),
        ("", "x.jsonl: no examples (the file is empty)"),
        ('{"prompt": "p", "choices": ["a", "b"], "answer": "c"}\n',
         "x.jsonl line 1: \"answer\" 'c' is not among the choices"),
        ('{"prompt": "p", "choices": ["a", "b"], "answer": 2}\n',
         'x.jsonl line 1: "answer" 2 is out of range for 2 choices'),
        ('{"prompt": "p", "choices": ["a"], "answer": 0}\n',
         'x.jsonl line 1: "choices" must be a list of at least 2 non-empty strings'),
        ('{"prompt": "p", "choices": ["a", "b"]}\n', 'x.jsonl line 1: missing field "answer"'),
        ('{"other": 1}\n',
         'x.jsonl line 1: no "text", "prompt"/"target" or "prompt"/"choices"/"answer" fields'),
        ("[1, 2]\n", "x.jsonl line 1: each line must be a JSON object"),
        # Once the file's kind is known, a row without its distinguishing field is named.
        ('{"prompt": "p", "target": "t"}\n{"prompt": "a"}\n',
         'x.jsonl line 2: missing field "target"'),
        ('{"prompt": "p", "choices": ["a", "b"], "answer": 0}\n{"prompt": "a"}\n',
         'x.jsonl line 2: missing field "choices"'),
        ('{"text": "a b"}\n{"prompt": "a"}\n', 'x.jsonl line 2: missing field "text"'),
        ('{"text": "a b"}\n{"other": 1}\n', 'x.jsonl line 2: missing field "text"'),
    ],
)  # fmt: skip
def test_bad_rows_name_line_and_field(tmp_path, content, message):
    path = tmp_path / "x.jsonl"
    path.write_text(content)
    with pytest.raises(InvalidData) as err:
        read_eval_data(path)
    assert str(err.value).replace(str(tmp_path) + "/", "") == message


def test_non_utf8_and_unknown_metric(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(InvalidData) as err:
        read_eval_data(path)
    assert str(err.value) == f"{path} line 2: not UTF-8"
    from compose.eval_data import check_metrics

    good = _write(tmp_path / "t.jsonl", [{"text": "a b"}])
    with pytest.raises(InvalidData) as err:
        check_metrics(read_eval_data(good), ["accuracy"])
    assert str(err.value) == (
        "metric 'accuracy' cannot be computed from text data (t.jsonl);"
        " it gives cross_entropy, perplexity"
    )


def test_limit_and_digest(tmp_path):
    import hashlib

    path = _write(tmp_path / "t.jsonl", [{"text": t} for t in TEXTS])
    data = read_eval_data(path, limit=2)
    assert len(data.rows) == 2
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_prompt_tuning_scores_skip_the_virtual_tokens(tmp_path):
    """PEFT returns logits for the virtual tokens too: scoring must not read those as the
    text's (a defect before: the first scored token was predicted from a virtual position)."""
    from peft import PeftModel, PromptTuningConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = make_base(tmp_path / "base", tokenizer="bpe")
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    adapter = make_adapter(tmp_path / "prompt", base, config, scale=0.5)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    tok = AutoTokenizer.from_pretrained(base)
    data = read_eval_data(_write(tmp_path / "t.jsonl", [{"text": t} for t in TEXTS]))
    got = evaluate.score(model, tok, data, ["cross_entropy"], batch_size=2)
    for text, ce in zip(TEXTS, got.scores["cross_entropy"], strict=True):
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, 3:].double()
        logp = torch.log_softmax(logits, dim=-1)
        expected = -sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids))) / (len(ids) - 1)
        assert ce == pytest.approx(expected, abs=1e-5)


def test_a_one_token_text_row_names_its_line(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    assert len(tok("a")["input_ids"]) == 1
    data = read_eval_data(_write(tmp_path / "x.jsonl", [{"text": "the quick brown fox"},
                                                        {"text": "a"}]))  # fmt: skip
    with pytest.raises(InvalidData) as err:
        evaluate.score(model, tok, data, data.metrics)
    assert str(err.value) == (
        'x.jsonl line 2: "text" has 1 token, and a text row\'s first token is only context:'
        " nothing is left to score (a text row needs at least 2 tokens)"
    )


def test_an_empty_prompt_scores_after_the_prefix_token_and_refuses_exact_match(
    model_and_tokenizer, tmp_path
):
    model, tok = model_and_tokenizer
    assert tok("")["input_ids"] == [] and tok.bos_token_id is not None  # adds no BOS
    rows = [{"prompt": "the quick", "target": " brown fox"}, {"prompt": "", "target": " fox"}]
    data = read_eval_data(_write(tmp_path / "e.jsonl", rows))
    with pytest.raises(InvalidData) as err:
        evaluate.score(model, tok, data, data.metrics)
    assert str(err.value) == (
        'e.jsonl line 2: "prompt" has no tokens (the tokenizer adds no BOS), so exact_match has'
        " nothing to generate from; give a prompt, or score only --metric target_logprob"
    )
    assert err.value.field == "prompt"
    # target_logprob: lm-evaluation-harness's rule for an empty context, every target token
    # scored after the prefix token (the BOS here).
    got = evaluate.score(model, tok, data, ("target_logprob",), batch_size=2)
    ids = [tok.bos_token_id] + tok(" fox", add_special_tokens=False)["input_ids"]
    total, count = _direct_logprob(model, ids, 1)
    assert count == len(ids) - 1 >= 1
    assert got.scores["target_logprob"][1] == pytest.approx(total / count, abs=1e-5)
    ctx = len(tok("the quick")["input_ids"])
    total, count = _direct_logprob(model, tok("the quick brown fox")["input_ids"], ctx)
    assert got.scores["target_logprob"][0] == pytest.approx(total / count, abs=1e-5)
