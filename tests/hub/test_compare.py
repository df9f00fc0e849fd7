"""hub compare: the table from cards and eval records, paired significance over the stored
per-example scores, weight cosine against dense math on PEFT's own scaled deltas."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from cli.output import human_count
from hub import Registry


def _dense_deltas(folder):
    """module -> scaling * B @ A, read back through PEFT's own model (fp64)."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads((folder / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_config(
        AutoConfig.from_pretrained(config["base_model_name_or_path"])
    )
    model = PeftModel.from_pretrained(base, str(folder))
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            a = module.lora_A["default"].weight.double()
            b = module.lora_B["default"].weight.double()
            out[name] = module.scaling["default"] * b @ a
    return out


def test_compare_two_trained_adapters(registry, trained):
    base, lora, lora2, data = trained
    registry.push(lora, name="team/long")
    registry.push(lora2, name="team/short")
    registry.evaluate(["team/long", "team/short"], data, base=str(base))
    from hub.compare import compare

    report = compare(registry, ["team/long", "team/short"])
    long_row, short_row = report["adapters"]
    assert (long_row["method"], long_row["rank"]) == ("lora", 4)
    ce = long_row["metrics"]["cross_entropy@held-out.jsonl"]
    assert ce["ci95"][0] <= ce["value"] <= ce["ci95"][1]
    assert ce["delta_vs_base"]["value"] < 0

    tests = {t["metric"]: t for t in report["significance"]}
    assert set(tests) == {"cross_entropy"}  # perplexity's test is cross_entropy's: not twice
    t = tests["cross_entropy"]
    assert t["test"] == "paired bootstrap" and t["n"] == 6
    short_ce = short_row["metrics"]["cross_entropy@held-out.jsonl"]["value"]
    assert t["difference"] == pytest.approx(ce["value"] - short_ce, abs=1e-9)
    assert t["p_holm"] == t["p_value"]  # a family of one test

    dense_a, dense_b = _dense_deltas(lora), _dense_deltas(lora2)
    flat_a = torch.cat([dense_a[m].flatten() for m in sorted(dense_a)])
    flat_b = torch.cat([dense_b[m].flatten() for m in sorted(dense_a)])
    expected = float(flat_a @ flat_b / (flat_a.norm() * flat_b.norm()))
    sim = report["similarity"]
    assert sim["cosine"][0][0] == pytest.approx(1.0)
    assert sim["cosine"][0][1] == pytest.approx(expected, abs=1e-6)
    assert sim["cosine"][1][0] == sim["cosine"][0][1]
    pair = next(iter(sim["per_module"]))
    assert len(sim["per_module"][pair]) == len(dense_a)
    spectra = report["spectra"][long_row["ref"]]
    assert len(spectra) == len(dense_a)
    first = next(iter(spectra.values()))
    assert first["rank"] == 4 and 0 < first["utilisation"] <= 1


def test_compare_cli_formats_and_errors(hub_home, trained):
    _, lora, lora2, _ = trained
    runner = CliRunner()
    runner.invoke(cli, ["push", str(lora), "--name", "team/x"])
    runner.invoke(cli, ["push", str(lora2), "--name", "team/y"])
    result = runner.invoke(cli, ["compare", "team/x", "team/y", "--markdown"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "| ADAPTER | METHOD | RANK | TARGETS | TRAINED | STORED | CHANGED (MERGED)"
        " | EXTRA (UNMERGED) | SIZE | OVERHEAD |"
    )
    card = Registry(hub_home).show("team/x")
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells[:4] == ["team/x@v1", "lora", "4", "5"]
    base = card.params_base
    assert cells[4:8] == [
        f"{human_count(n)} ({n / base:.3%})"
        for n in (
            card.params_trained,
            card.params_stored,
            card.params_changed_when_merged,
            card.params_extra_at_inference,
        )
    ]
    assert card.params_changed_when_merged > card.params_stored > 0
    result = runner.invoke(cli, ["compare", "team/x", "team/y", "--json"])
    report = json.loads(result.stdout)
    row = report["adapters"][0]
    assert row["params_trained"] == card.params_trained
    assert row["params_changed_when_merged_fraction"] == card.params_changed_when_merged_fraction
    assert report["significance"] == []  # no eval records yet: nothing to pair
    assert report["similarity"]["refs"][0].startswith("team/x@")
    result = runner.invoke(cli, ["compare", "team/x"])
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: hub compare needs at least two adapters\n",
    )
    result = runner.invoke(cli, ["compare", "team/x", "team/y", "--eval", "ev-000000000000"])
    assert result.stderr == (
        "Error: eval ev-000000000000 is not a record of any of the adapters compared"
        " (see `hub show REF` for their eval ids)\n"
    )


def test_compare_plots(hub_home, trained, tmp_path):
    base, lora, lora2, data = trained
    runner = CliRunner()
    runner.invoke(cli, ["push", str(lora), "--name", "team/p"])
    runner.invoke(cli, ["push", str(lora2), "--name", "team/q"])
    out = tmp_path / "plots"
    args = ["compare", "team/p", "team/q", "--data", str(data), "--base", str(base)]
    result = runner.invoke(cli, [*args, "--plot", str(out), "--axes", "size_bytes"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    stems = ("output-agreement", "output-kl", "pareto", "similarity", "spectra")  # --data: outputs
    assert names == [f"{stem}.{ext}" for stem in stems for ext in ("png", "svg")]
    svg = (out / "pareto.svg").read_text()
    assert "team/p" in svg and "cross_entropy@held-out.jsonl (lower is better)" in svg
    default = tmp_path / "default-axes"
    result = runner.invoke(cli, ["compare", "team/p", "team/q", "--plot", str(default)])
    assert result.exit_code == 0, result.output
    assert "params_trained" in (default / "pareto.svg").read_text()  # the default x axis
    result = runner.invoke(cli, ["compare", "team/p", "team/q", "--plot", str(out), "--axes",
                                 "params_trainable,bleu"])  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "Error: --axes: 'bleu' is not one of params_trained, params_stored,"
        " params_changed_when_merged, params_extra_at_inference,"
    )


def test_pareto_default_y_is_a_metric_that_tells_the_adapters_apart():
    from hub.compare import default_y_axis

    def row(params, **metrics):
        named = {k.replace("__", "@"): {"value": v} for k, v in metrics.items()}
        return {"params_trained": params, "metrics": named}

    # The demo's table: exact_match@code is first by name and 0 for every adapter (before,
    # the default); the sql columns cover all three adapters, the code ones two.
    demo = [
        row(13_000, exact_match__sql=0.94, target_logprob__sql=-0.05),
        row(6_700, exact_match__sql=0.0, target_logprob__sql=-8.1, exact_match__code=0.0,
            target_logprob__code=-0.05),
        row(20_000, exact_match__sql=0.0, target_logprob__sql=-1.7, exact_match__code=0.0,
            target_logprob__code=-3.9),
    ]  # fmt: skip
    assert default_y_axis(demo, "params_trained") == "target_logprob@sql"
    # Coverage first: a metric only one adapter has is a one-point plot.
    assert (
        default_y_axis(
            [row(1, a__d=0.1, b__d=0.5), row(2, b__d=0.7), row(3, b__d=0.9)], "params_trained"
        )
        == "b@d"
    )
    # Then values that differ: a flat exact_match loses to a varying one, likelihood or not.
    flat = [
        row(1, exact_match__d=0.0, accuracy__d=0.3),
        row(2, exact_match__d=0.0, accuracy__d=0.6),
    ]
    assert default_y_axis(flat, "params_trained") == "accuracy@d"
    # Then a likelihood metric, then the name.
    both = [row(1, exact_match__d=0.2, cross_entropy__d=2.0),
            row(2, exact_match__d=0.6, cross_entropy__d=1.5)]  # fmt: skip
    assert default_y_axis(both, "params_trained") == "cross_entropy@d"
    # Adapters without an x value are not points: they do not count.
    no_x = [row(None, a__d=0.1), row(None, a__d=0.9), row(1, b__d=0.5), row(2, b__d=0.5)]
    assert default_y_axis(no_x, "params_trained") == "b@d"
    assert default_y_axis([row(1), row(2)], "params_trained") is None
