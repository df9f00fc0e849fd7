"""hub eval --forgetting and --cost, composites through their own runner: quality numbers equal a
direct fp32 computation with PEFT; timings are checked for structure, never for speed."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel, PromptTuningConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from cli.main import cli
from schemas.errors import InvalidArgument, InvalidData
from tests.compose.deploy.models import make_adapter
from tests.hub.server.live import count_rows

GENERAL = [
    "many loras on the dog and a fox",
    "bytes quick tokens serve a model",
    "the llama cpp adapter with merges over a base",
    "one lazy brown dog",
]
# Tiny and fast: the CPU defaults (16/64 tokens, batch 1/8) are for real use.
TINY_COST = {"prompt_lengths": (4, 8), "batch_sizes": (1, 2), "new_tokens": 3, "warmup": 1}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def prompts(trained, tmp_path_factory):
    base = trained[0]
    root = tmp_path_factory.mktemp("prompts")
    config = {"task_type": "CAUSAL_LM", "num_virtual_tokens": 4}
    return [
        make_adapter(root / f"p{i}", base, PromptTuningConfig(**config), seed=i, scale=0.5)
        for i in (1, 2)
    ]


def _load(base, adapters=()):
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    for i, adapter in enumerate(adapters):
        model = PeftModel.from_pretrained(model, str(adapter))
        if i < len(adapters) - 1 or "lora" in adapter.name:
            model = model.merge_and_unload()
    return model.eval()


def _token_logprobs(model, ids):
    """log p(ids[t] | ids[:t]) for t >= 1, virtual-token positions dropped."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    logp = torch.log_softmax(logits[logits.shape[0] - len(ids) :].double(), dim=-1)
    return [float(logp[t - 1, ids[t]]) for t in range(1, len(ids))]


@pytest.mark.usefixtures("deployment")  # embedded, then team (PostgreSQL + S3)
def test_forgetting_equals_a_direct_peft_computation(registry, trained, tmp_path):
    base, lora, _, data = trained
    general = _jsonl(tmp_path / "general.jsonl", [{"text": t} for t in GENERAL])
    registry.push(lora, name="team/forget")
    [record] = registry.evaluate(
        "team/forget", data, base=str(base), forgetting=general, with_base=False, seed=3
    )

    tok = AutoTokenizer.from_pretrained(base)
    adapter_model, base_model = _load(base, [lora]), _load(base)
    sums_a, sums_b, counts = [], [], []
    for text in GENERAL:
        ids = tok(text)["input_ids"]
        sums_a.append(-sum(_token_logprobs(adapter_model, ids)))
        sums_b.append(-sum(_token_logprobs(base_model, ids)))
        counts.append(len(ids) - 1)
    f = record["forgetting"]
    expected = (sum(sums_a) - sum(sums_b)) / sum(counts)
    assert f["value"] == pytest.approx(expected, abs=1e-5)
    assert f["cross_entropy"] == pytest.approx(sum(sums_a) / sum(counts), abs=1e-5)
    assert f["base_cross_entropy"] == pytest.approx(sum(sums_b) / sum(counts), abs=1e-5)
    assert (f["documents"], f["tokens"], f["higher_is_better"]) == (4, sum(counts), False)
    assert f["ci95"][0] <= f["value"] <= f["ci95"][1] and f["stderr"] > 0
    assert record["config"]["forgetting"] == {
        "file": "general.jsonl",
        "sha256": f["dataset"]["sha256"],
    }
    # The text and the per-document sums are blobs that gc keeps and verify checks.
    rows = registry.store.read_bytes(f["results_sha256"]).decode().splitlines()
    assert [json.loads(r)["tokens"] for r in rows] == counts
    assert registry.store.read_bytes(f["dataset"]["sha256"]) == general.read_bytes()
    assert registry.gc().blobs_removed == 0
    assert registry.store.has(f["results_sha256"]) and registry.verify().healthy

    # The base's losses are cached: a second eval does not score the base again.
    cached = count_rows(registry, "base_scores")
    registry.evaluate("team/forget", data, base=str(base), forgetting=general, with_base=False)
    assert count_rows(registry, "base_scores") == cached


def test_forgetting_windows_score_every_token_once(trained, tmp_path):
    from compose.eval_data import read_eval_data
    from compose.forgetting import document_losses

    base, lora, _, _ = trained
    tok = AutoTokenizer.from_pretrained(base)
    data = read_eval_data(_jsonl(tmp_path / "g.jsonl", [{"text": t} for t in GENERAL]))
    model = _load(base, [lora])
    whole = document_losses(model, tok, data, window=64)
    windowed = document_losses(model, tok, data, window=3)
    assert windowed.tokens == whole.tokens == [len(tok(t)["input_ids"]) - 1 for t in GENERAL]
    # Windows of 3 tokens give each token at most 2 of context: different, finite losses.
    assert windowed.sums != whole.sums and all(s > 0 for s in windowed.sums)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        document_losses(model, tok, data, window=1)


def test_forgetting_refuses_a_file_that_is_not_text(registry, trained, tmp_path):
    base, lora, _, data = trained
    registry.push(lora, name="team/bad-forget")
    qa = _jsonl(tmp_path / "qa.jsonl", [{"prompt": "a", "target": "b"}])
    with pytest.raises(InvalidData) as err:
        registry.evaluate("team/bad-forget", data, base=str(base), forgetting=qa)
    assert str(err.value) == (
        '--forgetting qa.jsonl: expects {"text": ...} rows of general text, got generation rows'
    )
    assert registry.evals("team/bad-forget") == []


def _check_stats(s, runs):
    assert s["runs"] == runs
    assert 0 < s["min"] <= s["median"] <= s["p90"] <= s["max"]
    assert s["spread"] >= 0


def test_cost_of_a_lora_unmerged_and_merged(registry, trained):
    base, lora, _, data = trained
    registry.push(lora, name="team/cost")
    [record] = registry.evaluate(
        "team/cost", data, base=str(base), cost=True, cost_options={**TINY_COST, "runs": 10},
        with_base=False,
    )  # fmt: skip
    cost = record["cost"]
    assert list(cost["modes"]) == ["base", "unmerged", "merged"]
    assert record["config"]["cost"]["runs"] == 10 and cost["threads"] >= 1
    for mode in cost["modes"].values():
        configs = mode["configs"]
        assert [(c["batch"], c["prompt_tokens"]) for c in configs] == [
            (1, 4),
            (2, 4),
            (1, 8),
            (2, 8),
        ]
        for c in configs:
            _check_stats(c["prefill_ms"], 10)
            _check_stats(c["decode_ms_per_step"], 10)
            assert c["decode_tokens_per_s"] == pytest.approx(
                c["batch"] * 1000 / c["decode_ms_per_step"]["median"]
            )
            assert c["activation_peak_bytes"] > 0
        # A batch of two needs more activation memory than a batch of one.
        assert configs[3]["activation_peak_bytes"] > configs[2]["activation_peak_bytes"]
        assert mode["peak_bytes"] == mode["model_bytes"] + max(
            c["activation_peak_bytes"] for c in configs
        )
    # Unmerged holds the LoRA factors on top of the base; merged holds exactly the base's bytes.
    peft_model = PeftModel.from_pretrained(_load(base), str(lora))
    lora_bytes = sum(p.numel() * 4 for n, p in peft_model.named_parameters() if "lora_" in n)
    modes = cost["modes"]
    assert modes["unmerged"]["model_bytes"] - modes["base"]["model_bytes"] == lora_bytes
    assert modes["merged"]["model_bytes"] == modes["base"]["model_bytes"]
    assert modes["base"]["above_base_bytes"] == 0 and modes["base"]["overhead"] is None
    assert set(modes["merged"]["overhead"]) == {"prefill", "decode"}
    assert cost["adapter_load_seconds"] > 0 and cost["merge"]["seconds"] > 0

    # Merged vs unmerged on the probe prompts: against PEFT's own merge in fp32.
    tok = AutoTokenizer.from_pretrained(base)
    unmerged = PeftModel.from_pretrained(_load(base), str(lora)).eval()
    ids = [tok(t)["input_ids"][:8] for t in json_texts(data)[:8]]
    with torch.no_grad():
        before = [unmerged(input_ids=torch.tensor([i])).logits[0] for i in ids]
        merged = unmerged.merge_and_unload()
        after = [merged(input_ids=torch.tensor([i])).logits[0] for i in ids]
    direct = max(float((a - b).abs().max()) for a, b in zip(before, after, strict=True))
    merge = cost["merge"]
    assert merge["max_logit_diff"] < 1e-4 and abs(merge["max_logit_diff"] - direct) < 1e-5
    assert merge["greedy_token_agreement"] == 1.0 and merge["greedy_sequence_agreement"] == 1.0
    assert (merge["probe_sequences"], merge["probe_new_tokens"]) == (len(ids), 3)
    assert cost["prompt"] is None


def json_texts(path):
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def test_cost_of_a_prompt_adapter_counts_its_tokens(registry, trained, prompts):
    base, _, _, data = trained
    registry.push(prompts[0], name="team/prompt")
    [record] = registry.evaluate(
        "team/prompt", data, base=str(base), cost=True, cost_options=TINY_COST, with_base=False
    )
    cost = record["cost"]
    assert list(cost["modes"]) == ["base", "unmerged"] and cost["merge"] is None
    assert cost["merge_note"] == "prompt_tuning adds virtual tokens: there is nothing to merge"
    config = AutoModelForCausalLM.from_pretrained(base).config
    head_dim = config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4
    assert cost["prompt"] == {
        "extra_tokens": 4,
        "sequences_per_input": 1,
        "kv_cache_bytes_per_sequence": 4 * per_token,
        "context_share": {"4": 0.5, "8": 4 / 12},
    }
    # The prompt's table is a parameter of the unmerged model: 4 x hidden floats.
    modes = cost["modes"]
    assert (
        modes["unmerged"]["model_bytes"] - modes["base"]["model_bytes"]
        == 4 * config.hidden_size * 4
    )


def test_cost_options_are_checked(registry, trained):
    base, lora, _, data = trained
    registry.push(lora, name="team/cost-bad")
    for options, message in [
        ({"runs": 5}, "--cost-runs must be at least 10 (a median and p90 need them), got 5"),
        ({"new_tokens": 1},
         "--cost-new-tokens must be at least 2 (one prefill, one decode step), got 1"),
        ({"batch_sizes": (0,)}, "--cost-batch-sizes must be positive integers, got [0]"),
    ]:  # fmt: skip
        with pytest.raises(InvalidArgument) as err:
            registry.evaluate(
                "team/cost-bad", data, base=str(base), cost=True, cost_options=options
            )
        assert str(err.value) == message
    assert registry.evals("team/cost-bad") == []


def test_ensemble_and_stack_run_through_their_own_runner(registry, trained, prompts, tmp_path):
    base, lora, lora2, data = trained
    registry.push(prompts[0], name="team/p1")
    registry.push(prompts[1], name="team/p2")
    registry.push(lora, name="team/l1")
    registry.push(lora2, name="team/l2")
    registry.compose({"operator": "ensemble", "name": "team/ens", "inputs": ["team/p1", "team/p2"]})
    registry.compose({"operator": "stack", "name": "team/stack", "inputs": ["team/l1", "team/l2"]})
    ens, stack = registry.evaluate(["team/ens", "team/stack"], data, base=str(base), seed=1)

    tok = AutoTokenizer.from_pretrained(base)
    texts = json_texts(data)
    members = [PeftModel.from_pretrained(_load(base), str(p)).eval() for p in prompts]
    expected = []
    for text in texts:
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            per = [torch.log_softmax(m(input_ids=torch.tensor([ids])).logits[0, 4:].double(), -1)
                   for m in members]  # fmt: skip
        pooled = torch.log_softmax(torch.stack(per).mean(0), -1)  # normalised product of experts
        expected.append(
            -sum(float(pooled[t - 1, ids[t]]) for t in range(1, len(ids))) / (len(ids) - 1)
        )
    assert ens["metrics"]["cross_entropy"]["value"] == pytest.approx(
        sum(expected) / len(expected), abs=1e-5
    )
    stacked = _load(base, [lora, lora2])  # l1 merged, then l2 merged
    expected_stack = []
    for text in texts:
        values = _token_logprobs(stacked, tok(text)["input_ids"])
        expected_stack.append(-sum(values) / len(values))
    assert stack["metrics"]["cross_entropy"]["value"] == pytest.approx(
        sum(expected_stack) / len(expected_stack), abs=1e-5
    )
    # Greedy generation through the ensemble runner: exact_match on prompt/target rows.
    qa = _jsonl(tmp_path / "qa.jsonl", [{"prompt": "the quick brown", "target": "fox"}] * 2)
    [gen] = registry.evaluate("team/ens", qa, base=str(base), with_base=False)
    assert gen["metrics"]["exact_match"]["n"] == 2

    # Cost through the runners: the ensemble's and the stack's own mode, nothing merged after.
    costed, costed_stack = registry.evaluate(
        ["team/ens", "team/stack"], data, base=str(base), cost=True, cost_options=TINY_COST,
        with_base=False, metrics=["cross_entropy"],
    )  # fmt: skip
    assert list(costed["cost"]["modes"]) == ["base", "ensemble"]
    assert costed["cost"]["prompt"]["extra_tokens"] == 4
    assert costed["cost"]["prompt"]["sequences_per_input"] == 2
    stack_cost = costed_stack["cost"]
    assert list(stack_cost["modes"]) == ["base", "stack"] and stack_cost["merge"] is None
    assert stack_cost["merge_note"] == (
        "a stack's mergeable members are merged as it loads (its load time includes them)"
    )
    # Both LoRAs merged into the weights: the stack holds exactly the base's bytes.
    assert stack_cost["modes"]["stack"]["model_bytes"] == stack_cost["modes"]["base"]["model_bytes"]


def test_cli_eval_cost_forgetting_show_and_compare(hub_home, trained, tmp_path):
    base, lora, lora2, data = trained
    general = _jsonl(tmp_path / "general.jsonl", [{"text": t} for t in GENERAL])
    runner = CliRunner()
    for path, name in ((lora, "team/c1"), (lora2, "team/c2")):
        assert runner.invoke(cli, ["push", str(path), "--name", name]).exit_code == 0
    tiny = ["--cost-lengths", "4,8", "--cost-batch-sizes", "1,2", "--cost-new-tokens", "3"]
    result = runner.invoke(
        cli,
        ["eval", "team/c1", "team/c2", "--data", str(data), "--base", str(base), "--no-base",
         "--forgetting", str(general), "--cost", "--cost-warmup", "0", *tiny],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.startswith("team/c1  forgetting: ") and "nats/token" in line for line in lines)
    assert any(line.startswith("team/c2  cost merged: prefill ") for line in lines)
    assert any(line.startswith("team/c1  cost load: adapter ") and "greedy agreement 100.0%" in line
               for line in lines)  # fmt: skip
    shown = runner.invoke(cli, ["show", "team/c1"]).stdout
    assert "    forgetting: " in shown and "    cost unmerged: prefill " in shown

    table = runner.invoke(cli, ["compare", "team/c1", "team/c2", "--csv"]).stdout.splitlines()
    header = table[0].split(",")
    assert header[-3:] == ["FORGETTING", "COST UNMERGED", "COST MERGED"]
    report = json.loads(runner.invoke(cli, ["compare", "team/c1", "team/c2", "--json"]).stdout)
    [record] = json.loads(runner.invoke(cli, ["show", "team/c1", "--json"]).stdout)["evals"]
    first = report["adapters"][0]
    assert first["forgetting"]["value"] == record["forgetting"]["value"]
    assert first["cost"]["merged"]["above_base_bytes"] == 0
    assert (
        first["cost"]["unmerged"]["prefill"]
        == record["cost"]["modes"]["unmerged"]["overhead"]["prefill"]
    )

    result = runner.invoke(
        cli, ["eval", "team/c1", "--data", str(data), "--base", str(base), "--cost",
              "--cost-lengths", "4,x"],
    )  # fmt: skip
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: --cost-lengths '4,x': expected comma-separated integers, e.g. 16,64\n",
    )


def _positions(model, tok, texts):
    rows = []
    for text in texts:
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        logits = logits[logits.shape[0] - len(ids) :]
        rows.append(torch.log_softmax(logits.double(), -1)[: len(ids) - 1])
    return torch.cat(rows)


def test_output_similarity_equals_a_direct_peft_computation(hub_home, trained, prompts, tmp_path):
    base, lora, _, data = trained
    runner = CliRunner()
    for path, name in ((lora, "team/o-lora"), (prompts[0], "team/o-prompt")):
        assert runner.invoke(cli, ["push", str(path), "--name", name]).exit_code == 0
    plots = tmp_path / "plots"
    result = runner.invoke(
        cli,
        ["compare", "team/o-lora", "team/o-prompt", "--data", str(data), "--base", str(base),
         "--json", "--plot", str(plots)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)["output_similarity"]

    tok = AutoTokenizer.from_pretrained(base)
    texts = json_texts(data)
    a = _positions(_load(base, [lora]), tok, texts)
    b = _positions(PeftModel.from_pretrained(_load(base), str(prompts[0])).eval(), tok, texts)
    c = _positions(_load(base), tok, texts)

    def kl(p, q):
        return float((p.exp() * (p - q)).sum(-1).mean())

    def agree(p, q):
        return float((p.argmax(-1) == q.argmax(-1)).double().mean())

    assert out["positions"] == a.shape[0] == sum(len(tok(t)["input_ids"]) - 1 for t in texts)
    got = torch.tensor([out["kl"][0][1], out["kl"][1][0], *out["kl_to_base"]], dtype=torch.float64)
    want = torch.tensor([kl(a, b), kl(b, a), kl(a, c), kl(b, c)], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)  # fp32 log-probs stored
    assert out["kl"][0][0] == 0.0 and out["kl"][0][1] > 0
    assert out["top1_agreement"][0][1] == pytest.approx(agree(a, b))
    assert out["top1_agreement"][1][0] == out["top1_agreement"][0][1]
    assert out["top1_agreement_with_base"] == pytest.approx([agree(a, c), agree(b, c)])
    assert {p.name for p in plots.iterdir()} >= {
        "output-agreement.png", "output-agreement.svg", "output-kl.png", "output-kl.svg"
    }  # fmt: skip

    text = runner.invoke(
        cli, ["compare", "team/o-lora", "team/o-prompt", "--data", str(data), "--base", str(base)]
    ).stdout
    assert "output similarity on held-out.jsonl (" in text


def test_a_voting_ensemble_refuses_log_likelihood_metrics(registry, trained, prompts, tmp_path):
    import shutil

    base, _, _, data = trained
    registry.push(prompts[0], name="team/v1")
    registry.push(prompts[1], name="team/v2")
    card = registry.compose(
        {"operator": "ensemble", "name": "team/mean", "inputs": ["team/v1", "team/v2"]}
    ).card
    folder = tmp_path / "vote"
    shutil.copytree(registry.link_files(card, tmp_path / "linked"), folder)
    spec = json.loads((folder / "composite.json").read_text())
    (folder / "composite.json").write_text(json.dumps({**spec, "aggregate": "vote"}))
    vote = registry.push(folder, name="team/vote").card
    with pytest.raises(InvalidArgument) as err:
        registry.evaluate("team/vote", data, base=str(base))
    assert str(err.value) == (
        f"{vote.ref} is a voting ensemble: cross_entropy is undefined for it (tokens no member"
        " votes for have probability 0); use --metric exact_match, accuracy or accuracy_norm"
    )
    choice = _jsonl(tmp_path / "c.jsonl", [{"prompt": "the quick", "choices": [" brown", " dog"],
                                           "answer": 0}])  # fmt: skip
    [record] = registry.evaluate("team/vote", choice, base=str(base), metrics=["accuracy"])
    assert record["metrics"]["accuracy"]["n"] == 1
