"""hub compare --eval ID...: the given records are compared, not the newest on each dataset."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cli.main import cli


def test_compare_uses_the_given_records(hub_home, trained):
    base, lora, lora2, data = trained
    runner = CliRunner()
    runner.invoke(cli, ["push", str(lora), "--name", "team/x"])
    runner.invoke(cli, ["push", str(lora2), "--name", "team/y"])
    args = ["eval", "team/x", "team/y", "--data", str(data), "--base", str(base), "--json"]
    first = json.loads(runner.invoke(cli, [*args, "--limit", "3"]).stdout)
    newest = json.loads(runner.invoke(cli, args).stdout)
    assert first[0]["dataset"]["sha256"] == newest[0]["dataset"]["sha256"]  # one digest

    report = json.loads(runner.invoke(cli, ["compare", "team/x", "team/y", "--json"]).stdout)
    ce = report["adapters"][0]["metrics"]["cross_entropy@held-out.jsonl"]
    assert (ce["eval_id"], ce["n"]) == (newest[0]["id"], 6)

    chosen = ["--eval", first[0]["id"], "--eval", first[1]["id"]]
    result = runner.invoke(cli, ["compare", "team/x", "team/y", *chosen, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for row, record in zip(report["adapters"], first, strict=True):
        ce = row["metrics"]["cross_entropy@held-out.jsonl"]
        assert (ce["eval_id"], ce["n"]) == (record["id"], 3)
        assert ce["value"] == record["metrics"]["cross_entropy"]["value"]
    assert {t["n"] for t in report["significance"]} == {3}
