"""hub compare's metric columns and significance from eval records: --eval ID... compares the
given records, not the newest on each dataset; columns are per dataset digest; perplexity is
tested once, as cross_entropy."""

from __future__ import annotations

import json

import pytest
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


def test_columns_are_per_dataset_digest_and_perplexity_is_tested_once(registry, trained, tmp_path):
    """Two different files named text.jsonl: one column each, named by a digest prefix (both
    records of one adapter kept); significance has one cross_entropy test per dataset and no
    perplexity row (the same hypothesis), so Holm's family is 2."""
    import csv
    import io

    from hub.compare import compare
    from tests.hub.trained import HELD_OUT

    base, lora, lora2, _ = trained
    registry.push(lora, name="team/x")
    registry.push(lora2, name="team/y")
    records = []
    for folder, texts in (("one", HELD_OUT[:4]), ("two", HELD_OUT[2:])):
        path = tmp_path / folder / "text.jsonl"
        path.parent.mkdir()
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        records.append(registry.evaluate(["team/x", "team/y"], path, base=str(base)))
    digests = [r[0]["dataset"]["sha256"] for r in records]
    assert digests[0] != digests[1] and digests[0][:8] != digests[1][:8]
    labels = [f"text.jsonl#{d[:8]}" for d in digests]

    report = compare(registry, ["team/x", "team/y"])
    for row, index in zip(report["adapters"], (0, 1), strict=True):
        assert sorted(row["metrics"]) == sorted(
            f"{m}@{label}" for m in ("cross_entropy", "perplexity") for label in labels
        )
        for label, batch in zip(labels, records, strict=True):
            got = row["metrics"][f"cross_entropy@{label}"]
            assert got["value"] == batch[index]["metrics"]["cross_entropy"]["value"]
            assert got["eval_id"] == batch[index]["id"]
            assert got["dataset_sha256"] == batch[index]["dataset"]["sha256"]

    tests = report["significance"]
    assert [(t["metric"], t["dataset"], t["dataset_sha256"]) for t in tests] == [
        ("cross_entropy", label, digest) for label, digest in zip(labels, digests, strict=True)
    ]
    for t, batch in zip(tests, records, strict=True):
        x, y = (r["metrics"]["cross_entropy"]["value"] for r in batch)
        assert t["difference"] == pytest.approx(x - y, abs=1e-12)
    low, high = sorted(t["p_value"] for t in tests)
    holm = {low: min(1.0, 2 * low), high: max(min(1.0, 2 * low), high)}  # Holm, m = 2
    assert [t["p_holm"] for t in tests] == [holm[t["p_value"]] for t in tests]

    runner = CliRunner()
    out = runner.invoke(cli, ["compare", "team/x", "team/y", "--csv"]).stdout
    header = next(csv.reader(io.StringIO(out)))
    assert header[10:] == sorted(report["adapters"][0]["metrics"])
    markdown = runner.invoke(cli, ["compare", "team/x", "team/y", "--markdown"]).stdout
    assert markdown.splitlines()[0].endswith(" | ".join(header[10:]) + " |")
    text = runner.invoke(cli, ["compare", "team/x", "team/y"]).stdout
    assert f"cross_entropy@{labels[1]}  {tests[1]['difference']:+.4g}" in text


def test_perplexity_alone_is_compared_as_a_ratio(registry, trained):
    base, lora, lora2, data = trained
    registry.push(lora, name="team/x")
    registry.push(lora2, name="team/y")
    x, y = registry.evaluate(["team/x", "team/y"], data, base=str(base), metrics=["perplexity"])
    from hub.compare import compare

    (test,) = compare(registry, ["team/x", "team/y"])["significance"]
    ratio = x["metrics"]["perplexity"]["value"] / y["metrics"]["perplexity"]["value"]
    assert test["metric"] == "perplexity" and test["difference"] is None
    assert test["ratio"] == pytest.approx(ratio, rel=1e-9)
    assert test["ci95"][0] <= test["ratio"] <= test["ci95"][1]
    assert test["p_holm"] == test["p_value"]  # a family of one
    lo, hi = test["ci95"]
    text = CliRunner().invoke(cli, ["compare", "team/x", "team/y"]).stdout
    assert f"perplexity@held-out.jsonl  x{test['ratio']:.4g} [x{lo:.4g}, x{hi:.4g}]  " in text
