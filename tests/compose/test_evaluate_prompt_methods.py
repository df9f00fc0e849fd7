"""Native scoring of prompt-learning adapters: PEFT puts the virtual tokens in front of the
inputs and returns their logits too, so scored columns must be counted from the end."""

from __future__ import annotations

import json

import pytest
import torch

from compose import evaluate
from compose.eval_data import read_eval_data
from tests.compose.deploy.models import make_base

TEXTS = ["the quick brown fox jumps", "a merged adapter ships to llama cpp", "vllm serves many"]


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
def test_prompt_adapter_scores_skip_the_virtual_tokens(method, tmp_path):
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.factories import METHODS

    base = make_base(tmp_path / "base", tokenizer="bpe")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), METHODS[method](str(base)))
    model.save_pretrained(tmp_path / "adapter")
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(tmp_path / "adapter")
    ).eval()
    tok = AutoTokenizer.from_pretrained(base)
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    got = evaluate.score(model, tok, read_eval_data(data), ["cross_entropy"], batch_size=2)
    for text, ce in zip(TEXTS, got.scores["cross_entropy"], strict=True):
        ids = tok(text)["input_ids"]
        with torch.no_grad():  # logits of the virtual tokens first, then one per input token
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        assert logits.shape[0] > len(ids)
        logp = torch.log_softmax(logits[-len(ids) :].double(), dim=-1)
        expected = -sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids))) / (len(ids) - 1)
        assert ce == pytest.approx(expected, abs=1e-5)
