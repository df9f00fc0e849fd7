"""hub eval end to end: a LoRA actually trained on a synthetic task beats the base with an
interval that excludes 0, the recorded numbers equal a direct PEFT computation, records survive
gc and verify, the base is scored once, bad input records nothing."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from tests.compose.deploy.models import make_base
from tests.hub.server.live import count_rows
from tests.hub.trained import HELD_OUT

pytestmark = pytest.mark.usefixtures("deployment")


def _direct_cross_entropy(base, adapter, texts):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    values = []
    for text in texts:
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            values.append(float(model(input_ids=ids, labels=ids).loss))
    return values


def test_trained_adapter_beats_the_base_and_matches_peft(registry, trained):
    base, lora, _, data = trained
    card = registry.push(lora, name="team/trained").card
    [record] = registry.evaluate("team/trained", data, base=str(base), seed=1)

    expected = _direct_cross_entropy(base, lora, HELD_OUT)
    expected_base = _direct_cross_entropy(base, None, HELD_OUT)
    ce = record["metrics"]["cross_entropy"]
    assert ce["value"] == pytest.approx(sum(expected) / len(expected), abs=1e-5)
    assert ce["n"] == len(HELD_OUT) and ce["higher_is_better"] is False
    assert ce["ci95"][0] <= ce["value"] <= ce["ci95"][1]
    base_ce = record["base"]["metrics"]["cross_entropy"]
    assert base_ce["value"] == pytest.approx(sum(expected_base) / len(expected_base), abs=1e-5)
    ppl = record["metrics"]["perplexity"]
    assert ppl["value"] == pytest.approx(math.exp(ce["value"]))
    # The trained adapter is better than the base, and the paired interval excludes 0.
    delta = record["delta"]["cross_entropy"]
    assert delta["value"] < 0 and delta["ci95"][1] < 0
    assert delta["value"] == pytest.approx(ce["value"] - base_ce["value"], abs=1e-9)
    assert record["delta"]["perplexity"]["ratio"] < 1

    assert record["commit"] == card.commit
    assert record["dataset"] == {
        "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
        "rows": len(HELD_OUT),
        "kind": "text",
        "name": "held-out.jsonl",
    }
    assert registry.store.read_bytes(record["dataset"]["sha256"]) == data.read_bytes()
    results = registry.store.read_bytes(record["results_sha256"]).decode().splitlines()
    rows = [json.loads(line) for line in results]
    assert [r["row"] for r in rows] == list(range(len(HELD_OUT)))
    assert [r["cross_entropy"] for r in rows] == pytest.approx(expected, abs=1e-5)
    assert {"torch", "transformers", "peft", "python"} <= set(record["versions"])

    # On the version: the card's metrics and the eval list; the commit did not change.
    shown = registry.show("team/trained")
    assert shown.commit == card.commit
    [m] = [m for m in shown.metrics if m.name == "cross_entropy"]
    assert (m.source, m.eval_id, m.n) == ("hub-eval", record["id"], len(HELD_OUT))
    assert registry.evals("team/trained") == [record]

    # gc keeps what eval records reference; verify re-hashes it.
    assert registry.gc().blobs_removed == 0
    report = registry.verify()
    assert report.healthy
    assert report.blobs_checked == len(card.files) + 3  # dataset, results, cached base scores


def test_base_is_scored_once_for_many_adapters(registry, trained):
    base, lora, lora2, data = trained
    registry.push(lora, name="team/a")
    registry.push(lora2, name="team/b")
    first = registry.evaluate(["team/a", "team/b"], data, base=str(base), metrics=["perplexity"])
    assert count_rows(registry, "base_scores") == 1
    assert first[0]["base"] == first[1]["base"]
    assert first[0]["metrics"] != first[1]["metrics"]
    assert list(first[0]["metrics"]) == ["perplexity"]


def test_cli_eval_json_show_and_bad_input(hub_home, trained, tmp_path):
    base, lora, _, data = trained
    runner = CliRunner()
    assert runner.invoke(cli, ["push", str(lora), "--name", "team/cli"]).exit_code == 0
    result = runner.invoke(
        cli,
        ["eval", "team/cli", "--data", str(data), "--base", str(base), "--json", "--limit", "3"],
    )
    assert result.exit_code == 0, result.output
    [record] = json.loads(result.stdout)
    assert record["dataset"]["rows"] == 3 and record["config"]["limit"] == 3

    shown = json.loads(runner.invoke(cli, ["show", "team/cli", "--json"]).stdout)
    assert [e["id"] for e in shown["evals"]] == [record["id"]]
    text = runner.invoke(cli, ["show", "team/cli"]).stdout
    assert f"  {record['id']}  hub-eval  held-out.jsonl sha256:" in text

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "target": "b"}\n{"prompt": "a", "target": 3}\n')
    result = runner.invoke(cli, ["eval", "team/cli", "--data", str(bad), "--base", str(base)])
    assert (result.exit_code, result.stderr) == (
        1,
        'Error: bad.jsonl line 2: "target" must be a string, got int\n',
    )
    result = runner.invoke(
        cli, ["eval", "team/cli", "--data", str(data), "--base", str(base), "--metric", "accuracy"]
    )
    assert result.stderr == (
        "Error: metric 'accuracy' cannot be computed from text data (held-out.jsonl);"
        " it gives cross_entropy, perplexity\n"
    )
    shown = json.loads(runner.invoke(cli, ["show", "team/cli", "--json"]).stdout)
    assert len(shown["evals"]) == 1  # nothing recorded by the failed runs


def test_eval_refuses_a_base_that_does_not_fit(registry, trained, tmp_path):
    _, lora, _, data = trained
    other = make_base(tmp_path / "wide", hidden=96, heads=4, kv_heads=2, tokenizer="bpe")
    registry.push(lora, name="team/misfit")
    from schemas.errors import IncompatibleAdapters

    with pytest.raises(IncompatibleAdapters) as err:
        registry.evaluate("team/misfit", data, base=str(other), with_base=False)
    # Checked against the base's safetensors headers before loading: module and both shapes.
    assert str(err.value) == (
        f"team/misfit@{registry.show('team/misfit').commit} does not fit the base {other}:"
        " module model.layers.0.mlp.down_proj changes a [64, 128] weight, but the base's is"
        " [96, 192]"
    )
    assert (err.value.module, err.value.expected, err.value.got) == (
        "model.layers.0.mlp.down_proj",
        [96, 192],
        [64, 128],
    )
    assert registry.evals("team/misfit") == []


def test_metric_add(hub_home, trained):
    _, lora, _, _ = trained
    runner = CliRunner()
    runner.invoke(cli, ["push", str(lora), "--name", "team/manual"])
    result = runner.invoke(
        cli, ["metric", "add", "team/manual", "exact_match=0.71@spider", "--ci", "0.66,0.76",
              "--n", "1034"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Recorded exact_match=0.71 [0.66, 0.76] on team/manual@")
    card = json.loads(runner.invoke(cli, ["show", "team/manual", "--json"]).stdout)
    [m] = card["metrics"]
    assert (m["value"], m["ci95"], m["n"], m["source"]) == (0.71, [0.66, 0.76], 1034, "manual")
    assert card["evals"][0]["source"] == "manual"
    for args, message in [
        (["--ci", "0.8,0.9"], "Error: --ci 0.8,0.9: expected LO,HI around the value 0.71\n"),
        (["--ci", "x"], "Error: invalid --ci 'x': expected LO,HI, e.g. 0.66,0.76\n"),
        (["--n", "0"], "Error: --n must be a positive number of examples, got 0\n"),
    ]:
        result = runner.invoke(cli, ["metric", "add", "team/manual", "exact_match=0.71", *args])
        assert (result.exit_code, result.stderr) == (1, message)
