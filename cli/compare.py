"""``hub compare``: one call of ``hub.compare.compare`` plus the table, CSV or Markdown."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import click

from cli.backends import registry_of
from cli.eval import eval_progress, format_estimate
from cli.eval_format import MODES, format_forgetting_cell, format_overhead_cell
from cli.output import human_size, ledger_count, method_label, print_json, print_table
from schemas.card import LEDGER


def _metric_columns(adapters: list[dict[str, Any]]) -> list[str]:
    return sorted({name for a in adapters for name in a["metrics"]})


LEDGER_HEADERS = ["TRAINED", "STORED", "CHANGED (MERGED)", "EXTRA (UNMERGED)"]
"""The parameter ledger's columns, in schemas.card.LEDGER's order."""


def _ledger_cell(a: dict[str, Any], name: str) -> str:
    """``3.6K (0.012%)``; ``-`` when unknown (the card's params_unknown says why)."""
    text = ledger_count(a, name, digits=3)
    return text.split(" of ")[0] + ")" if " of " in text else text


def _table(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    adapters = report["adapters"]
    columns = _metric_columns(adapters)
    modes = [m for m in MODES if any(m in (a.get("cost") or {}) for a in adapters)]
    forgetting = any(a.get("forgetting") for a in adapters)
    headers = ["ADAPTER", "METHOD", "RANK", "TARGETS", *LEDGER_HEADERS, "SIZE", "OVERHEAD"]
    headers += columns
    headers += ["FORGETTING"] * forgetting + [f"COST {m.upper()}" for m in modes]
    rows = []
    for a in adapters:
        rows.append(
            [
                f"{a['repo']}@v{a['version']}",
                method_label(a),
                a["rank"],
                len(a["targets"]),
                *(_ledger_cell(a, name) for name in LEDGER),
                human_size(a["size_bytes"]),
                a["overhead"],
                *(format_estimate(a["metrics"][c]) if c in a["metrics"] else "" for c in columns),
                *([format_forgetting_cell(a.get("forgetting"))] if forgetting else []),
                *(format_overhead_cell((a.get("cost") or {}).get(m)) for m in modes),
            ]
        )
    return headers, rows


def _markdown(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return "" if value is None else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@click.command(name="compare")
@click.argument("refs", nargs=-1, required=True)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="Evaluate every adapter on this JSONL first (as `hub eval`), then compare, with the"
    " output-space similarity on it (mean per-token KL, top-1 agreement).",
)
@click.option(
    "--base",
    help="Base model (a folder or a reference; default: each card's) for --data, and for the"
    " weight deltas of IA3, OFT and BOFT, which depend on the base weight.",
)
@click.option("--eval", "eval_ids", multiple=True, help="Compare only these eval records.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option(
    "--plot",
    "plot_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write pareto, similarity and spectra plots (PNG and SVG) into this folder; with"
    " --data also output-agreement and output-kl heatmaps.",
)
@click.option(
    "--axes",
    default="params_trained",
    show_default=True,
    help="Pareto axes X[,Y]: a card field (the ledger: params_trained, params_stored,"
    " params_changed_when_merged, params_extra_at_inference, each also as *_fraction;"
    " size_bytes, rank) or a metric column NAME@DATASET; Y defaults to the metric most"
    " adapters have that differs between them (a likelihood metric before others).",
)
@click.option("--json", "fmt", flag_value="json", help="Print machine-readable JSON.")
@click.option("--csv", "fmt", flag_value="csv", help="Print the table as CSV.")
@click.option("--markdown", "fmt", flag_value="markdown", help="Print the table as Markdown.")
@click.pass_context
def compare_command(
    ctx: click.Context,
    refs: tuple[str, ...],
    data: Path | None,
    base: str | None,
    eval_ids: tuple[str, ...],
    seed: int,
    plot_dir: Path | None,
    axes: str,
    fmt: str | None,
) -> None:
    """Lay adapters side by side: card facts, metrics with intervals, which differences are
    significant (paired, Holm-corrected), weight-space similarity and spectra.

    \b
    Example:
        hub compare team/sql-lora team/sql-dora team/sql-merged
        hub compare team/sql-lora team/sql-dora --data sql-dev.jsonl --base models/llama --json
        hub compare team/sql-lora team/sql-dora --plot plots --axes params_trained
    """
    from hub.compare import compare, write_plots

    registry = registry_of(ctx)
    ids = list(eval_ids)
    if data is not None:
        records = registry.evaluate(list(refs), data, base=base, seed=seed, progress=eval_progress)
        ids += [r["id"] for r in records]
    report = compare(registry, list(refs), eval_ids=ids, seed=seed, data=data, base=base)
    if plot_dir is not None:
        x, _, y = axes.partition(",")
        for path in write_plots(report, plot_dir, x=x, y=y or None):
            click.echo(f"Wrote {path}", err=True)
    if fmt == "json":
        print_json(report)
        return
    headers, rows = _table(report)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(rows)
        click.echo(out.getvalue(), nl=False)
        return
    if fmt == "markdown":
        click.echo(_markdown(headers, rows))
        return
    print_table(headers, rows)
    tests = report["significance"]
    if tests:
        click.echo("\nsignificance (paired, Holm-corrected):")
        for t in tests:
            verdict = "significant" if t["significant"] else "not significant"
            lo, hi = t["ci95"]
            change = (
                f"x{t['ratio']:.4g} [x{lo:.4g}, x{hi:.4g}]"  # perplexity alone: a ratio
                if t["difference"] is None
                else f"{t['difference']:+.4g} [{lo:+.4g}, {hi:+.4g}]"
            )
            click.echo(
                f"  {t['a'].split('@')[0]} vs {t['b'].split('@')[0]}  {t['metric']}@{t['dataset']}"
                f"  {change}  {t['test']} p={t['p_value']:.3g} holm={t['p_holm']:.3g}  {verdict}"
            )
    sim = report["similarity"]
    names = [r.split("@")[0] for r in sim["refs"]]
    click.echo("\nweight cosine (low rank, all modules):")
    print_table(
        ["", *names],
        [
            [name, *("-" if v is None else f"{v:.3f}" for v in row)]
            for name, row in zip(names, sim["cosine"], strict=True)
        ],
    )
    for ref, why in [*sim["skipped"].items(), *sim["notes"].items()]:
        click.echo(f"  {ref.split('@')[0]}: {why}")
    for pair, why in sim["not_comparable"].items():
        a, b = (ref.split("@")[0] for ref in pair.split(" | "))
        click.echo(f"  {a} vs {b}: {why}")
    outputs = report.get("output_similarity")
    if outputs:
        click.echo(
            f"\noutput similarity on {outputs['dataset']['name']} ({outputs['positions']}"
            " positions): mean KL(row || column) nats / top-1 agreement"
        )
        print_table(
            ["", *names, "base"],
            [
                [
                    name,
                    *(
                        "-" if kl is None else f"{kl:.3g} / {agree:.0%}"
                        for kl, agree in zip(kl_row, agree_row, strict=True)
                    ),
                    "-" if kb is None else f"{kb:.3g} / {ab:.0%}",
                ]
                for name, kl_row, agree_row, kb, ab in zip(
                    names,
                    outputs["kl"],
                    outputs["top1_agreement"],
                    outputs["kl_to_base"],
                    outputs["top1_agreement_with_base"],
                    strict=True,
                )
            ],
        )
