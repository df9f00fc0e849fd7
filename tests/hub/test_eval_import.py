"""Results that arrive with a push (Trainer result files, README model-index) become eval
records with provenance; `hub pull --with-evals` writes model-index back and it round-trips."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import yaml
from click.testing import CliRunner

from cli.main import cli

pytestmark = pytest.mark.usefixtures("deployment")

MODEL_INDEX = """---
library_name: peft
model-index:
- name: sql-lora
  results:
  - task: {type: text-generation}
    dataset: {type: spider, name: Spider, split: validation}
    metrics:
    - {type: exact_match, value: 0.71, name: Exact match, verified: false}
  - task: {type: text-generation}
    dataset: {name: wikitext}
    metrics:
    - {type: perplexity, value: '12.5'}
---
# SQL LoRA

Writes SQL.
"""


def _folder(adapters, tmp_path, files):
    folder = tmp_path / "run"
    shutil.copytree(adapters("lora"), folder)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_trainer_results_and_model_index_become_records(registry, adapters, tmp_path):
    results = {"epoch": 3.0, "eval_loss": 0.61, "eval_accuracy": 0.8, "eval_samples": 200,
               "eval_runtime": 1.2, "train_loss": 0.9, "train_samples": 1000,
               "train_runtime": 10.5, "train_samples_per_second": 95.2}  # fmt: skip
    evals = {k: results[k] for k in ("epoch", "eval_loss", "eval_accuracy", "eval_samples")}
    folder = _folder(
        adapters,
        tmp_path,
        {
            "all_results.json": json.dumps(results),
            "eval_results.json": json.dumps(evals),
            "README.md": MODEL_INDEX,
        },
    )
    card = registry.push(folder, name="team/imported").card
    records = registry.evals("team/imported")
    assert [r["source"] for r in records] == ["trainer", "model-index", "model-index"]
    trainer, spider, wikitext = records
    assert trainer["origin"] == {
        "file": "all_results.json",
        "sha256": hashlib.sha256((folder / "all_results.json").read_bytes()).hexdigest(),
    }  # eval_results.json repeats it: no second record
    summary = {
        k: (v["value"], v["n"], v["higher_is_better"]) for k, v in trainer["metrics"].items()
    }
    assert summary == {
        "eval_accuracy": (0.8, 200, True),
        "eval_loss": (0.61, 200, False),
        "train_loss": (0.9, 1000, False),
    }  # fmt: skip
    assert spider["dataset"] == {"name": "spider", "type": "spider", "split": "validation"}
    assert spider["metrics"]["exact_match"]["value"] == 0.71
    assert spider["origin"]["file"] == "README.md" and spider["origin"]["model-index"] == [0, 0]
    assert wikitext["dataset"] == {"name": "wikitext"}
    assert wikitext["metrics"]["perplexity"]["higher_is_better"] is False
    assert all(r["commit"] == card.commit and r["ref"] == card.ref for r in records)

    shown = registry.show("team/imported")
    by_name = {m.name: m for m in shown.metrics}
    assert (by_name["exact_match"].source, by_name["exact_match"].dataset) == (
        "model-index",
        "spider",
    )
    assert by_name["exact_match"].eval_id == spider["id"]
    assert shown.metric("perplexity@wikitext") == 12.5
    assert shown.metric("eval_loss") == 0.61
    # Both result files are stored with the adapter (they are small and say how it was made).
    assert {"all_results.json", "eval_results.json"} <= {f.path for f in shown.files}

    again = registry.push(folder, name="team/imported")
    assert again.created is False
    assert registry.evals("team/imported") == records  # same ids: nothing added twice
    assert len(registry.show("team/imported").metrics) == len(shown.metrics)


def test_malformed_results_refuse_the_push(hub_home, adapters, tmp_path):
    runner = CliRunner()
    cases = [
        ({"README.md": MODEL_INDEX.replace("'12.5'", "twelve")},
         "README.md: model-index[0].results[1].metrics[0].value must be a number, got 'twelve'"
         " (fix the README's front matter, or remove model-index)"),
        ({"README.md": "---\nmodel-index: {name: x}\n---\n"},
         "README.md: model-index must be a list of models (fix the README's front matter, or"
         " remove model-index)"),
        ({"all_results.json": "[1, 2]"},
         "all_results.json must hold a JSON object (what Trainer.save_metrics writes)"),
        ({"eval_results.json": "{not json"}, "eval_results.json is not valid JSON ("),
    ]  # fmt: skip
    for i, (files, message) in enumerate(cases):
        folder = _folder(adapters, tmp_path / str(i), files)
        result = runner.invoke(cli, ["push", str(folder), "--name", "team/bad"])
        assert result.exit_code == 1
        assert result.stderr.startswith(f"Error: {folder}/{message}"), result.stderr
        assert result.stderr.count("\n") == 1
    assert runner.invoke(cli, ["ls", "--json"]).stdout.strip() == "[]"


def test_pull_with_evals_writes_model_index_that_round_trips(hub_home, adapters, tmp_path):
    from huggingface_hub import ModelCard

    runner = CliRunner()
    folder = adapters("lora")
    runner.invoke(cli, ["push", str(folder), "--name", "team/rt", "--metric", "bleu=0.3"])
    runner.invoke(cli, ["metric", "add", "team/rt", "exact_match=0.5@spider"])
    runner.invoke(cli, ["metric", "add", "team/rt", "exact_match=0.7@spider"])  # latest wins
    runner.invoke(cli, ["metric", "add", "team/rt", "cross_entropy=1.25@held-out.jsonl",
                        "--lower-is-better"])  # fmt: skip

    plain = tmp_path / "plain"
    assert runner.invoke(cli, ["pull", "team/rt", "-o", str(plain)]).exit_code == 0
    assert (plain / "README.md").read_bytes() == (folder / "README.md").read_bytes()

    out = tmp_path / "with-evals"
    result = runner.invoke(cli, ["pull", "team/rt", "-o", str(out), "--with-evals"])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"Pulled team/rt into {out}\n"
        "model-index in README.md: 2 metrics; left out (no dataset, which model-index"
        " requires): bleu\n"
    )
    text = (out / "README.md").read_text()
    assert "&id" not in text and "*id" not in text  # each result's task is written out
    assert text.count("  - task:\n      type: text-generation\n") == 2
    front = yaml.safe_load(text.split("---\n")[1])
    original = yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])
    assert {k: v for k, v in front.items() if k != "model-index"} == original  # kept
    assert text.endswith((folder / "README.md").read_text().split("---\n", 2)[2])  # body kept
    [model] = front["model-index"]
    assert model["name"] == "team/rt"
    assert [(r["dataset"]["type"], r["metrics"]) for r in model["results"]] == [
        ("spider", [{"type": "exact_match", "value": 0.7, "name": "exact_match"}]),
        ("held-out.jsonl", [{"type": "cross_entropy", "value": 1.25, "name": "cross_entropy"}]),
    ]  # bleu has no dataset: model-index requires one, so it is left out
    # huggingface_hub reads it as evaluation results.
    parsed = ModelCard.load(out / "README.md").data.eval_results
    assert [(e.metric_type, e.metric_value, e.dataset_type) for e in parsed] == [
        ("exact_match", 0.7, "spider"),
        ("cross_entropy", 1.25, "held-out.jsonl"),
    ]
    # Pushed again, the model-index comes back as the same metrics.
    assert runner.invoke(cli, ["push", str(out), "--name", "team/rt-copy"]).exit_code == 0
    copy = json.loads(runner.invoke(cli, ["show", "team/rt-copy", "--json"]).stdout)
    assert [(m["name"], m["value"], m["dataset"], m["source"], m["higher_is_better"])
            for m in copy["metrics"]] == [
        ("exact_match", 0.7, "spider", "model-index", True),
        ("cross_entropy", 1.25, "held-out.jsonl", "model-index", False),
    ]  # fmt: skip


def test_pull_with_evals_says_what_model_index_left_out(hub_home, adapters, tmp_path):
    # A Trainer's results name no dataset, and model-index requires one: the pull says so
    # instead of writing a README without them silently.
    results = {"eval_loss": 0.61, "eval_accuracy": 0.8, "eval_samples": 200}
    folder = _folder(adapters, tmp_path, {"all_results.json": json.dumps(results)})
    runner = CliRunner()
    assert runner.invoke(cli, ["push", str(folder), "--name", "team/tr"]).exit_code == 0
    out = tmp_path / "pulled"
    result = runner.invoke(cli, ["pull", "team/tr", "-o", str(out), "--with-evals"])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"Pulled team/tr into {out}\n"
        "model-index: none written; left out (no dataset, which model-index requires):"
        " eval_accuracy, eval_loss\n"
    )
    assert (out / "README.md").read_bytes() == (folder / "README.md").read_bytes()

    runner.invoke(cli, ["push", str(adapters("lora")), "--name", "team/none"])
    result = runner.invoke(cli, ["pull", "team/none", "-o", str(tmp_path / "n"), "--with-evals"])
    assert result.stdout.splitlines()[1] == "model-index: none written (the version has no metrics)"
    result = runner.invoke(cli, ["pull", "team/none", "-o", str(tmp_path / "plain")])
    assert result.stdout == f"Pulled team/none into {tmp_path / 'plain'}\n"


def test_compare_shows_trainer_numbers_under_their_own_names(registry, adapters, tmp_path):
    # Records on no dataset (a Trainer's results and its trainer_state.json) each keep their
    # values in the table, under the metric's name alone: not one record hiding the other
    # under a `name:None` dataset.
    from hub.compare import compare

    results = {"eval_accuracy": 0.8, "eval_samples": 200}
    state = {
        "global_step": 30,
        "log_history": [{"step": 30, "epoch": 1.0, "eval_loss": 0.65}],
    }
    files = {"all_results.json": json.dumps(results), "trainer_state.json": json.dumps(state)}
    registry.push(_folder(adapters, tmp_path, files), name="team/trained")
    assert len(registry.evals("team/trained")) == 2
    registry.push(adapters("lora"), name="team/plain")
    registry.add_metric("team/plain", "eval_accuracy=0.7")

    report = compare(registry, ["team/trained", "team/plain"])
    trained, plain = report["adapters"]
    assert {k: v["value"] for k, v in trained["metrics"].items()} == {
        "eval_accuracy": 0.8,
        "eval_loss": 0.65,
    }
    assert {k: v["value"] for k, v in plain["metrics"].items()} == {"eval_accuracy": 0.7}
    assert report["significance"] == []
