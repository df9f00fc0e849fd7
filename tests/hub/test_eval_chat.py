"""hub eval --chat: prompts wrapped in the base tokenizer's chat template, scored as the
tokens that follow the templated prompt; a tokenizer without a template is refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli

TEMPLATE = (
    "{% for m in messages %}<|user|> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
ROWS = [
    {"prompt": "the quick brown", "target": " fox jumps"},
    {"prompt": "vllm serves many", "target": " loras on one base"},
    {"prompt": "a merged adapter", "target": " ships to llama"},
]


@pytest.fixture(scope="module")
def chat_base(trained, tmp_path_factory):
    from transformers import AutoTokenizer

    base = trained[0]
    folder = tmp_path_factory.mktemp("chat") / "base"
    shutil.copytree(base, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(folder)
    return folder


def _direct_target_logprob(base, adapter, prompts_targets):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(adapter)
    ).eval()
    out = []
    for prompt, target in prompts_targets:
        ctx = tok(prompt)["input_ids"]
        whole = tok(prompt + target)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].double(), -1)
        picked = [float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole))]
        out.append(sum(picked) / len(picked))
    return out


def test_chat_template_applied_to_prompts(registry, trained, chat_base, tmp_path):
    _, lora, _, _ = trained
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    registry.push(lora, name="team/chat")
    options = dict(base=str(chat_base), metrics=["target_logprob"], with_base=False)
    [chat] = registry.evaluate("team/chat", data, chat=True, **options)
    [plain] = registry.evaluate("team/chat", data, **options)

    templated = [(f"<|user|> {r['prompt']}\n<|assistant|> ", r["target"]) for r in ROWS]
    expected = _direct_target_logprob(chat_base, lora, templated)
    rows = [
        json.loads(line)
        for line in registry.store.path(chat["results_sha256"]).read_text().splitlines()
    ]
    torch.testing.assert_close(
        [r["target_logprob"] for r in rows], expected, atol=1e-5, rtol=0
    )  # fp32 forward pass vs the same in fp64 log-softmax: well within 1e-5
    assert chat["config"]["chat"] is True and plain["config"]["chat"] is False
    plain_expected = _direct_target_logprob(
        chat_base, lora, [(r["prompt"], r["target"]) for r in ROWS]
    )
    assert plain["metrics"]["target_logprob"]["value"] == pytest.approx(
        sum(plain_expected) / len(plain_expected), abs=1e-5
    )
    chat_value = chat["metrics"]["target_logprob"]["value"]
    assert abs(chat_value - plain["metrics"]["target_logprob"]["value"]) > 1e-3


def test_chat_refusals_record_nothing(hub_home, trained, tmp_path):
    base, lora, _, text_data = trained
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    runner = CliRunner()
    runner.invoke(cli, ["push", str(lora), "--name", "team/nochat"])
    result = runner.invoke(
        cli, ["eval", "team/nochat", "--data", str(data), "--base", str(base), "--chat"]
    )
    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: --chat: the tokenizer of the base {base} has no chat template (no"
        " 'chat_template' in its tokenizer_config.json or chat_template.jinja); leave out"
        " --chat or use a base that has one\n",
    )
    result = runner.invoke(
        cli, ["eval", "team/nochat", "--data", str(text_data), "--base", str(base), "--chat"]
    )
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: --chat wraps prompts in the chat template, but held-out.jsonl holds text rows"
        " (no prompts): leave out --chat, or use prompt/target or prompt/choices rows\n",
    )
    shown = json.loads(runner.invoke(cli, ["show", "team/nochat", "--json"]).stdout)
    assert shown["evals"] == []
