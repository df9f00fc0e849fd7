"""hub eval --lm-eval: lm-evaluation-harness's own evaluator on a local task YAML over a JSONL
the test writes, with a real trained LoRA on a tiny base. The record has the native fields, its
accuracy equals hub's native `choice` eval on the same file, the per-choice log-likelihoods in
lm-eval's per-sample log equal hub's, and bad input is one `Error:` line with nothing recorded.
"""

from __future__ import annotations

import hashlib
import json
import sys
from importlib.metadata import version

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli

ROWS = [
    {"prompt": "the quick brown", "choices": [" fox jumps", " model with", " bytes and"], "answer": 0},  # noqa: E501
    {"prompt": "a merged adapter", "choices": [" ships to", " lazy dog"], "answer": 0},
    {"prompt": "vllm serves many", "choices": [" tokens bytes", " loras on", " the quick"], "answer": 1},  # noqa: E501
    {"prompt": "with tokens bytes", "choices": [" and merges", " over the"], "answer": 0},
    {"prompt": "jumps over the", "choices": [" one base", " lazy dog", " a merged"], "answer": 1},
    {"prompt": "many loras on one", "choices": [" base model", " fox jumps"], "answer": 0},
]  # fmt: skip

TASK = """task: toy_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture
def task(tmp_path):
    """(data file, include folder) of a local multiple-choice task."""
    data = tmp_path / "choice.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "toy_choice.yaml").write_text(TASK.format(data=data))
    return data, folder


def _native_choice_logprobs(base, adapter, data):
    """hub's native runner on the same file: per-row, per-choice summed log-likelihoods."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compose.eval_data import read_eval_data
    from compose.evaluate import score

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    dataset = read_eval_data(data)
    return score(model, AutoTokenizer.from_pretrained(base), dataset, ["accuracy"], batch_size=8)


def test_lm_eval_record_equals_the_native_choice_eval(registry, trained, task):
    base, lora, _, _ = trained
    data, folder = task
    card = registry.push(lora, name="team/lm-eval").card
    [record] = registry.evaluate_lm_eval("team/lm-eval", "toy_choice", folder, base=str(base))
    [native] = registry.evaluate("team/lm-eval", data, base=str(base), metrics=["accuracy"])

    # The same metric under the same name, value and per-example scores: acc is accuracy.
    acc, nat = record["metrics"]["accuracy"], native["metrics"]["accuracy"]
    assert acc["value"] == pytest.approx(nat["value"], abs=1e-12)
    assert (acc["n"], acc["higher_is_better"]) == (len(ROWS), True)
    assert acc["ci95"] == pytest.approx(nat["ci95"], abs=1e-12)  # same seeded bootstrap
    assert acc["stderr"] == pytest.approx(nat["stderr"], abs=1e-12)
    assert acc["lm_eval_stderr"] == pytest.approx(nat["stderr"], abs=1e-9)
    base_acc = record["base"]["metrics"]["accuracy"]["value"]
    assert base_acc == pytest.approx(native["base"]["metrics"]["accuracy"]["value"], abs=1e-12)
    assert record["delta"]["accuracy"]["value"] == pytest.approx(acc["value"] - base_acc)

    # lm-eval's per-sample log is the per-example blob; its log-likelihoods equal hub's. lm-eval
    # returns each as an fp32 sum (float(logits.sum())), 1.9e-6 apart at |ll| ~ 20, so the
    # bound is relative: 1e-6 of the value (hub sums the same fp32 log-probs in float64).
    lines = registry.store.path(record["results_sha256"]).read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["doc_id"] for r in rows] == list(range(len(ROWS)))
    expected = _native_choice_logprobs(base, lora, data)
    for row, want, correct in zip(rows, expected.choice_logprobs, expected.scores["accuracy"],
                                  strict=True):  # fmt: skip
        got = [resp[0] for resp in row["lm_eval"]["filtered_resps"]]
        torch.testing.assert_close(
            torch.tensor(got, dtype=torch.float64),
            torch.tensor(want, dtype=torch.float64),
            rtol=1e-6,
            atol=1e-6,
        )
        assert row["accuracy"] == correct == row["lm_eval"]["acc"]
        assert row["lm_eval"]["doc"] == ROWS[row["doc_id"]]
        assert "base_accuracy" in row and "filtered_resps" in row["base_lm_eval"]

    # The record: native fields, the data file's digest (stored as a blob), lm-eval's version.
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    assert record["dataset"]["sha256"] == digest
    assert registry.store.path(digest).read_bytes() == data.read_bytes()
    assert (record["dataset"]["rows"], record["dataset"]["kind"]) == (6, "lm-eval:multiple_choice")
    assert record["dataset"]["name"] == "toy_choice"
    assert record["source"] == "lm-eval" and record["commit"] == card.commit
    assert record["versions"]["lm-eval"] == version("lm_eval")
    assert record["config"]["lm_eval"]["lm_eval_version"] == version("lm_eval")
    assert record["config"]["lm_eval"]["task"]["output_type"] == "multiple_choice"
    assert record["config"]["task_yaml"]["text"] == (folder / "toy_choice.yaml").read_text()
    assert {"batch_size", "dtype", "seed", "device"} <= set(record["config"])

    # On the version, beside the native record; gc keeps its blobs.
    assert [e["id"] for e in registry.evals("team/lm-eval")] == [record["id"], native["id"]]
    [m] = [m for m in registry.show("team/lm-eval").metrics if m.source == "lm-eval"]
    assert (m.name, m.eval_id, m.dataset, m.n) == ("accuracy", record["id"], "toy_choice", 6)
    registry.gc()
    assert registry.store.has(record["results_sha256"]) and registry.store.has(digest)


def test_cli_lm_eval_json_and_errors(hub_home, trained, task, tmp_path, monkeypatch):
    base, lora, _, _ = trained
    data, folder = task
    runner = CliRunner()
    assert runner.invoke(cli, ["push", str(lora), "--name", "team/cli-lm"]).exit_code == 0
    ok = runner.invoke(
        cli,
        ["eval", "team/cli-lm", "--lm-eval", "toy_choice", "--include-path", str(folder),
         "--base", str(base), "--no-base", "--limit", "4", "--json"],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    [record] = json.loads(ok.stdout)
    assert record["dataset"]["rows"] == 4 and record["metrics"]["accuracy"]["n"] == 4
    assert record["base"] is None and record["config"]["limit"] == 4

    def error(*args):
        result = runner.invoke(cli, ["eval", "team/cli-lm", "--base", str(base), *args])
        assert result.exit_code == 1, result.output
        return result.stderr

    assert error("--lm-eval", "nope", "--include-path", str(folder)) == (
        f"Error: --lm-eval nope: no such task in --include-path {folder} (tasks there:"
        " toy_choice)\n"
    )
    hub_task = tmp_path / "hub-tasks"
    hub_task.mkdir()
    (hub_task / "remote.yaml").write_text(
        "task: remote\ndataset_path: Rowan/hellaswag\ntest_split: validation\n"
        "output_type: multiple_choice\ndoc_to_text: '{{ctx}}'\ndoc_to_choice: '{{endings}}'\n"
        "doc_to_target: '{{label}}'\n"
    )
    assert error("--lm-eval", "remote", "--include-path", str(hub_task)) == (
        f"Error: --lm-eval remote ({hub_task / 'remote.yaml'}): dataset_path 'Rowan/hellaswag'"
        " is not local data; only local files are evaluated: dataset_path: one of json, csv,"
        " parquet, text, arrow, with dataset_kwargs.data_files naming the file\n"
    )
    url_task = tmp_path / "url-tasks"
    url_task.mkdir()
    (url_task / "url.yaml").write_text(
        TASK.replace("toy_choice", "url").format(data="https://example.org/choice.jsonl")
    )
    assert error("--lm-eval", "url", "--include-path", str(url_task)) == (
        f"Error: --lm-eval url ({url_task / 'url.yaml'}): data file"
        " 'https://example.org/choice.jsonl' is not local; only local files are evaluated\n"
    )
    assert error("--lm-eval", "toy_choice") == (
        "Error: --lm-eval TASK and --include-path DIR go together: give both\n"
    )
    assert error("--lm-eval", "toy_choice", "--include-path", str(folder), "--data", str(data)) == (
        "Error: --data and --lm-eval are two backends: give one (the task YAML names its data)\n"
    )
    assert error() == (
        "Error: hub eval needs adapters and --data FILE.jsonl (or --lm-eval TASK --include-path"
        " DIR, or --rerun EVAL_ID); e.g. hub eval team/sql-lora --data dev.jsonl\n"
    )
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if the extra were not installed
    assert error("--lm-eval", "toy_choice", "--include-path", str(folder)) == (
        "Error: --lm-eval needs lm-evaluation-harness: pip install 'hub-adapters[eval]'"
        " (or lm-eval)\n"
    )
    shown = json.loads(runner.invoke(cli, ["show", "team/cli-lm", "--json"]).stdout)
    assert [e["id"] for e in shown["evals"]] == [record["id"]]  # the failed runs recorded nothing


def test_lm_eval_of_several_adapters_that_fails_part_way_records_nothing(
    registry, trained, task, tmp_path
):
    from peft import OFTConfig

    from schemas.errors import IncompatibleAdapters
    from tests.compose.deploy.models import make_adapter, make_base
    from tests.hub.server.live import count_rows

    base, lora, _, _ = trained
    wide = make_base(tmp_path / "wide", hidden=96, heads=4, kv_heads=2, tokenizer="bpe")
    oft = make_adapter(
        tmp_path / "oft", wide,
        OFTConfig(task_type="CAUSAL_LM", r=0, oft_block_size=4, target_modules=["q_proj"]),
    )  # fmt: skip
    registry.push(lora, name="team/lm-good")
    card = registry.push(oft, name="team/lm-wide").card
    blobs = sorted(registry.store.iter_digests())
    # team/lm-good and the base run through lm-eval first; then team/lm-wide fails to load.
    with pytest.raises(IncompatibleAdapters) as err:
        registry.evaluate_lm_eval(
            ["team/lm-good", "team/lm-wide"], "toy_choice", task[1], base=str(base)
        )
    assert str(err.value) == (
        f"{card.ref} does not fit the base {base.resolve()}: tensor"
        " model.layers.0.self_attn.q_proj.oft_R.weight is [24, 6] in the adapter, but the base"
        " needs [16, 6]"
    )
    assert registry.evals("team/lm-good") == []
    assert (count_rows(registry, "evals"), sorted(registry.store.iter_digests())) == (0, blobs)
