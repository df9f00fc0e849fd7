"""One meaning for a metric: ``card.metric()``, ``hub ls --sort metric:`` and ``--where`` pick
the same value (latest of the most trusted source), in SQL for the search."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli.main import cli
from schemas.metrics import MetricCondition, default_higher_is_better, pick


def _push(registry, adapters, name, metrics, tag):
    # Same adapter files under different names; a tag keeps their cards apart.
    return registry.push(adapters("lora"), name=name, metrics=metrics, tags=[f"k={tag}"]).card


@pytest.mark.usefixtures("deployment")  # embedded, then team (PostgreSQL + S3)
def test_card_metric_and_sort_agree_on_the_latest_most_trusted_value(registry, adapters):
    # a: typed 0.5 at push, then a manual 0.9 (later, same priority): 0.9.
    _push(registry, adapters, "team/a", ["acc=0.5@d"], "a")
    registry.add_metric("team/a", "acc=0.9@d")
    # b: typed 0.95 at push, then 0.6: the first value (0.95) was what card.metric() gave
    # before, and the maximum (0.95) what the sort used; the latest is 0.6.
    _push(registry, adapters, "team/b", ["acc=0.95@d"], "b")
    registry.add_metric("team/b", "acc=0.6@d")
    # c: one value on another dataset.
    _push(registry, adapters, "team/c", ["acc=0.7@other"], "c")
    values = {c.repo: c.metric("acc") for c in registry.search()}
    assert values == {"team/a": 0.9, "team/b": 0.6, "team/c": 0.7}
    ranked = [c.repo for c in registry.search(sort="metric:acc")]
    assert ranked == ["team/a", "team/c", "team/b"]
    assert [c.repo for c in registry.search(sort="+metric:acc")] == ["team/b", "team/c", "team/a"]
    assert [c.repo for c in registry.search(sort="metric:acc@d")] == ["team/a", "team/b", "team/c"]
    assert registry.show("team/c").metric("acc@d") is None
    assert registry.show("team/c").metric("acc", dataset="other") == 0.7

    where = [c.repo for c in registry.search(where=["metric:acc>=0.7"], sort="name")]
    assert where == ["team/a", "team/c"]
    assert [c.repo for c in registry.search(where=["metric:acc@d<0.7"])] == ["team/b"]
    assert [c.repo for c in registry.search(where=["metric:acc>0.6@d"])] == ["team/a"]
    assert [c.repo for c in registry.search(where=["metric:acc=0.7"])] == ["team/c"]
    assert [c.repo for c in registry.search(where=["metric:acc<=0.6", "metric:acc>=0.6"])] == [
        "team/b"
    ]


@pytest.mark.usefixtures("deployment")  # embedded, then team (PostgreSQL + S3)
def test_measured_beats_reported_and_lower_is_better_sorts_first(registry, trained):
    base, lora, lora2, data = trained
    registry.push(lora, name="team/long", metrics=["cross_entropy=0.01@held-out.jsonl"])
    registry.push(lora2, name="team/short")
    registry.add_metric("team/short", "cross_entropy=0.02@held-out.jsonl", lower_is_better=True)
    records = registry.evaluate(["team/long", "team/short"], data, base=str(base), with_base=False)
    measured = {r["ref"].split("@")[0]: r["metrics"]["cross_entropy"]["value"] for r in records}
    # A manual value added after the eval is still outranked by the measured one.
    registry.add_metric("team/long", "cross_entropy=0.001@held-out.jsonl", lower_is_better=True)
    cards = {c.repo: c for c in registry.search()}
    assert {repo: c.metric("cross_entropy") for repo, c in cards.items()} == measured
    # cross_entropy is lower-is-better: the longer-trained adapter (lower) comes first.
    assert measured["team/long"] < measured["team/short"]
    assert [c.repo for c in registry.search(sort="metric:cross_entropy")] == [
        "team/long",
        "team/short",
    ]
    cut = (measured["team/long"] + measured["team/short"]) / 2
    assert [c.repo for c in registry.search(where=[f"metric:cross_entropy<{cut}"])] == ["team/long"]
    # Every metric says its source, dataset and direction.
    for metric in cards["team/long"].metrics:
        assert metric.source in {"push", "manual", "hub-eval"}
        assert metric.dataset == "held-out.jsonl" and metric.higher_is_better is False


def test_rule_in_python_matches_the_docs():
    metrics = [
        {"name": "f1", "value": 1.0, "source": "hub-eval", "dataset": "x"},
        {"name": "f1", "value": 2.0, "source": "trainer", "dataset": "x"},
        {"name": "f1", "value": 3.0, "source": "manual", "dataset": "y"},
        {"name": "f1", "value": 4.0, "source": "hub-eval", "dataset": "y"},
    ]
    assert pick(metrics, "f1")["value"] == 4.0
    assert pick(metrics, "f1", "x")["value"] == 1.0
    assert pick(metrics[1:3], "f1")["value"] == 2.0
    assert pick(metrics, "f2") is None
    assert [default_higher_is_better(n) for n in ("eval_loss", "wer", "perplexity", "bleu")] == [
        False,
        False,
        False,
        True,
    ]


@pytest.mark.usefixtures("deployment")  # embedded, then team (PostgreSQL + S3)
def test_cli_where_and_its_errors(hub_home, adapters):
    runner = CliRunner()
    for name, value in (("team/x", "0.3"), ("team/y", "0.8")):
        args = ["push", str(adapters("lora")), "--name", name, "--tag", f"n={name}"]
        assert runner.invoke(cli, [*args, "--metric", f"bleu={value}@wmt"]).exit_code == 0
    result = runner.invoke(cli, ["ls", "--where", "metric:bleu@wmt>0.5", "--json"])
    assert result.exit_code == 0, result.output
    assert [c["repo"] for c in json.loads(result.stdout)] == ["team/y"]
    for spec in ("metric:bleu>>1", "metric:bleu>x", "metric:bleu@a>1@b", "metric:>1"):
        result = runner.invoke(cli, ["ls", "--where", spec])
        assert (result.exit_code, result.stderr) == (
            1,
            f"Error: invalid --where {spec!r}: expected metric:NAME[@DATASET]OP VALUE with OP"
            " one of >=, <=, >, <, =, e.g. 'metric:exact_match@spider>=0.7'\n",
        )


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("metric:em>=0.5", ("em", ">=", 0.5, None)),
        ("metric:em@sp<=1", ("em", "<=", 1.0, "sp")),
        ("metric:em<2@sp", ("em", "<", 2.0, "sp")),
        ("metric:eval_loss=0.25", ("eval_loss", "=", 0.25, None)),
    ],
)
def test_where_syntax(spec, parsed):
    c = MetricCondition.parse(spec)
    assert (c.name, c.op, c.value, c.dataset) == parsed


@pytest.mark.usefixtures("deployment")  # embedded, then team (PostgreSQL + S3)
def test_metric_add_takes_the_direction_from_the_name_as_push_does(hub_home, adapters):
    # perplexity typed at push and added later sort in one direction: lower first. Before,
    # `hub metric add` stored higher_is_better=true for every name, and the SQL sort (each
    # row by its own direction) put the pushed values lowest-first and the added ones
    # highest-first, interleaved.
    runner = CliRunner()
    for name, value in (("team/p4", "4"), ("team/p9", "9")):
        args = ["push", str(adapters("lora")), "--name", name, "--tag", f"n={name}"]
        assert runner.invoke(cli, [*args, "--metric", f"perplexity={value}"]).exit_code == 0
    for name, value in (("team/m2", "2"), ("team/m6", "6"), ("team/m12", "12")):
        args = ["push", str(adapters("lora")), "--name", name, "--tag", f"n={name}"]
        assert runner.invoke(cli, args).exit_code == 0
        result = runner.invoke(cli, ["metric", "add", name, f"perplexity={value}", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["metrics"]["perplexity"]["higher_is_better"] is False
    result = runner.invoke(cli, ["ls", "--sort", "metric:perplexity", "--json"])
    assert result.exit_code == 0, result.output
    assert [c["repo"] for c in json.loads(result.stdout)] == [
        "team/m2",
        "team/p4",
        "team/m6",
        "team/p9",
        "team/m12",
    ]
    # A name whose default is lower-is-better can be said to be higher-is-better, and back.
    result = runner.invoke(
        cli, ["metric", "add", "team/p4", "loss_reduction=0.3", "--higher-is-better", "--json"]
    )
    assert json.loads(result.stdout)["metrics"]["loss_reduction"]["higher_is_better"] is True
    result = runner.invoke(
        cli, ["metric", "add", "team/p4", "bleu=0.3", "--lower-is-better", "--json"]
    )
    assert json.loads(result.stdout)["metrics"]["bleu"]["higher_is_better"] is False
    shown = json.loads(runner.invoke(cli, ["show", "team/p4", "--json"]).stdout)
    assert [(m["name"], m["source"], m["higher_is_better"]) for m in shown["metrics"]] == [
        ("perplexity", "push", False),
        ("loss_reduction", "manual", True),
        ("bleu", "manual", False),
    ]


def test_metric_add_error_names_the_argument_not_an_option(hub_home, adapters):
    runner = CliRunner()
    assert runner.invoke(cli, ["push", str(adapters("lora")), "--name", "team/x"]).exit_code == 0
    result = runner.invoke(cli, ["metric", "add", "team/x", "novalue"])
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: invalid metric 'novalue': expected NAME=VALUE[@DATASET], e.g. accuracy=0.71@mmlu\n",
    )
    result = runner.invoke(cli, ["metric", "add", "team/x", "acc=1e400"])
    assert result.stderr == (
        "Error: invalid metric 'acc=1e400': the value must be a finite number (inf and values"
        " beyond 1.8e308 are not)\n"
    )
    # `hub push --metric` keeps naming its option.
    result = runner.invoke(
        cli, ["push", str(adapters("lora")), "--name", "team/x", "--metric", "novalue"]
    )
    assert result.stderr == (
        "Error: invalid --metric 'novalue': expected NAME=VALUE[@DATASET], e.g."
        " accuracy=0.71@mmlu\n"
    )
    assert json.loads(runner.invoke(cli, ["show", "team/x", "--json"]).stdout)["metrics"] == []
