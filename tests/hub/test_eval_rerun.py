"""hub eval --rerun: repeat a recorded eval from its stored dataset and config, compare per
metric (counts exactly, other metrics within the tolerance), record the rerun linked to it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.compose.deploy.models import make_base

CHOICES = [
    {"prompt": "the quick brown", "choices": [" fox", " dog", " base"], "answer": 0},
    {"prompt": "vllm serves many", "choices": [" loras", " tokens"], "answer": " loras"},
    {"prompt": "a merged adapter ships to", "choices": [" llama", " the"], "answer": 0},
    {"prompt": "with tokens bytes and", "choices": [" merges", " fox"], "answer": 0},
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rerun_reproduces_and_links_the_new_record(hub_home, trained, tmp_path):
    base, lora, _, data = trained
    choice = _write(tmp_path / "choice.jsonl", CHOICES)
    runner = CliRunner()
    assert runner.invoke(cli, ["push", str(lora), "--name", "team/re"]).exit_code == 0
    common = ["--base", str(base), "--json"]
    [text_record] = json.loads(
        runner.invoke(cli, ["eval", "team/re", "--data", str(data), *common]).stdout
    )
    [choice_record] = json.loads(
        runner.invoke(cli, ["eval", "team/re", "--data", str(choice), *common, "--no-base"]).stdout
    )
    choice.unlink()  # the rerun reads the stored blob, not the file

    result = runner.invoke(cli, ["eval", "--rerun", choice_record["id"], "--json"])
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    assert again["id"] != choice_record["id"]
    assert again["dataset"] == choice_record["dataset"]
    assert again["config"] == choice_record["config"]
    assert again["base"] is None
    rerun = again["rerun"]
    assert (rerun["of"], rerun["reproduced"]) == (choice_record["id"], True)
    accuracy = rerun["differences"]["accuracy"]
    correct = round(choice_record["metrics"]["accuracy"]["value"] * len(CHOICES))
    assert accuracy == {
        "old": choice_record["metrics"]["accuracy"]["value"],
        "new": again["metrics"]["accuracy"]["value"],
        "difference": 0.0,
        "compared": "count",
        "old_count": correct,
        "new_count": correct,
        "changed_rows": [],
        "agrees": True,
    }
    assert result.stderr == f"Reproduced {choice_record['id']} as {again['id']} on {again['ref']}\n"

    result = runner.invoke(cli, ["eval", "--rerun", text_record["id"]])
    assert result.exit_code == 0, result.output
    assert "cross_entropy" in result.stdout and "base:perplexity" in result.stdout
    shown = json.loads(runner.invoke(cli, ["show", "team/re", "--json"]).stdout)
    assert len(shown["evals"]) == 4
    latest = shown["evals"][-1]
    assert latest["rerun"]["of"] == text_record["id"]
    for name, d in latest["rerun"]["differences"].items():
        assert d["compared"] == "tolerance", name
        assert abs(d["difference"]) <= 1e-4 * max(1.0, abs(d["old"])), name


def test_rerun_reports_a_difference_and_exits_1(hub_home, trained, tmp_path):
    base, lora, _, data = trained
    other = make_base(tmp_path / "other-base", tokenizer="bpe", seed=1)  # same shapes
    runner = CliRunner()
    runner.invoke(cli, ["push", str(lora), "--name", "team/drift"])
    args = ["eval", "team/drift", "--data", str(data), "--base", str(base), "--no-base"]
    [old] = json.loads(runner.invoke(cli, [*args, "--json"]).stdout)
    result = runner.invoke(cli, ["eval", "--rerun", old["id"], "--base", str(other), "--json"])
    assert result.exit_code == 1
    new = json.loads(result.stdout)
    assert new["rerun"]["reproduced"] is False
    ce = new["rerun"]["differences"]["cross_entropy"]
    assert ce["agrees"] is False and abs(ce["difference"]) > 1e-2
    assert result.stderr == (
        f"Rerun {new['id']} of {old['id']} differs in cross_entropy, perplexity (recorded both)\n"
    )
    # A larger tolerance accepts it (the difference is reported all the same).
    loose = ["eval", "--rerun", old["id"], "--base", str(other), "--tolerance", "10"]
    assert runner.invoke(cli, loose).exit_code == 0


def test_rerun_bad_input_records_nothing(hub_home, trained):
    _, lora, _, _ = trained
    runner = CliRunner()
    runner.invoke(cli, ["push", str(lora), "--name", "team/bad"])
    manual = json.loads(
        runner.invoke(cli, ["metric", "add", "team/bad", "acc=0.5", "--json"]).stdout
    )
    cases = [
        (["--rerun", "ev-nope"], f"Error: no eval record 'ev-nope' in the registry at {hub_home}"
         " (`hub show REF` lists a version's eval ids)\n"),
        (["--rerun", manual["id"]], f"Error: {manual['id']} is a manual record: only `hub eval`"
         " records keep the dataset and config a re-run needs\n"),
        (["team/bad", "--rerun", manual["id"]], "Error: --rerun takes only an eval id (and"
         " optionally --base, --device, --tolerance): the adapter, data and config are the"
         " record's\n"),
        (["--rerun", manual["id"], "--tolerance", "-1"],
         "Error: --tolerance must be a non-negative number, got -1.0\n"),
        (["team/bad"], "Error: hub eval needs adapters and --data FILE.jsonl (or --lm-eval TASK"
         " --include-path DIR, or --rerun EVAL_ID); e.g. hub eval team/sql-lora --data"
         " dev.jsonl\n"),
    ]  # fmt: skip
    for args, message in cases:
        result = runner.invoke(cli, ["eval", *args])
        assert (result.exit_code, result.stderr) == (1, message)
    shown = json.loads(runner.invoke(cli, ["show", "team/bad", "--json"]).stdout)
    assert [e["id"] for e in shown["evals"]] == [manual["id"]]


GENERAL = ["many loras on the dog and a fox", "bytes quick tokens serve a model"]


def test_rerun_repeats_forgetting_and_cost(hub_home, trained, tmp_path):
    from hub import Registry

    base, lora, _, data = trained
    general = _write(tmp_path / "general.jsonl", [{"text": t} for t in GENERAL])
    tiny = {"prompt_lengths": (4,), "batch_sizes": (1,), "new_tokens": 3, "warmup": 1}
    with Registry(hub_home) as registry:
        registry.push(lora, name="team/extras")
        [old] = registry.evaluate(
            "team/extras", data, base=str(base), with_base=False, forgetting=general, cost=True,
            cost_options=tiny,
        )  # fmt: skip
    general.unlink()  # the rerun reads the stored blob
    result = CliRunner().invoke(cli, ["eval", "--rerun", old["id"], "--json"])
    assert result.exit_code == 0, result.output
    new = json.loads(result.stdout)
    assert new["config"] == old["config"]
    assert new["forgetting"]["dataset"] == old["forgetting"]["dataset"]
    assert new["forgetting"]["value"] == pytest.approx(old["forgetting"]["value"], abs=1e-6)
    assert list(new["cost"]["modes"]) == ["base", "unmerged", "merged"]
    assert new["cost"]["options"] == old["cost"]["options"]
    rerun = new["rerun"]
    assert rerun["reproduced"] is True
    forgetting = rerun["differences"]["forgetting"]
    assert (forgetting["compared"], forgetting["agrees"]) == ("tolerance", True)
    assert forgetting["old"] == old["forgetting"]["value"]
    for name in ("greedy_token_agreement", "greedy_sequence_agreement"):
        assert rerun["differences"][f"cost:{name}"] == {
            "old": old["cost"]["merge"][name],
            "new": new["cost"]["merge"][name],
            "difference": 0.0,
            "compared": "exact",
            "agrees": True,
        }
    # Timings are measured again and reported, never compared.
    cost = rerun["cost"]
    assert cost["remeasured"] is True
    assert cost["compared"] == ["cost:greedy_sequence_agreement", "cost:greedy_token_agreement"]
    unmerged = cost["timings"]["unmerged"]
    assert (unmerged["batch"], unmerged["prompt_tokens"]) == (1, 4)
    assert (
        unmerged["prefill_ms"][0]
        == old["cost"]["modes"]["unmerged"]["configs"][0]["prefill_ms"]["median"]
    )
    assert (
        unmerged["prefill_ms"][1]
        == new["cost"]["modes"]["unmerged"]["configs"][0]["prefill_ms"]["median"]
    )

    text = CliRunner().invoke(cli, ["eval", "--rerun", old["id"]])
    assert text.exit_code == 0, text.output
    assert "forgetting" in text.stdout and "cost:greedy_token_agreement" in text.stdout
    assert "cost unmerged (batch 1, 4 tokens): prefill " in text.stdout
    assert "(re-measured; timings are not compared)" in text.stdout


def test_rerun_reports_changed_forgetting(hub_home, trained, tmp_path):
    from hub import Registry

    base, lora, _, data = trained
    other = make_base(tmp_path / "other-base", tokenizer="bpe", seed=1)  # same shapes
    general = _write(tmp_path / "general.jsonl", [{"text": t} for t in GENERAL])
    with Registry(hub_home) as registry:
        registry.push(lora, name="team/forgets")
        [old] = registry.evaluate(
            "team/forgets", data, base=str(base), with_base=False, forgetting=general
        )
    result = CliRunner().invoke(cli, ["eval", "--rerun", old["id"], "--base", str(other), "--json"])
    assert result.exit_code == 1
    new = json.loads(result.stdout)
    forgetting = new["rerun"]["differences"]["forgetting"]
    assert forgetting["agrees"] is False
    assert forgetting["difference"] == pytest.approx(
        new["forgetting"]["value"] - old["forgetting"]["value"]
    )
    assert "forgetting" in result.stderr
