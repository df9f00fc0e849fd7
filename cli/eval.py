"""``hub eval`` and ``hub metric add``: measured and reported results on adapter versions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cli.backends import registry_of
from cli.eval_format import extra_lines
from cli.eval_lm_eval import NEEDS_DATA, lm_eval_options, lm_eval_records
from cli.output import json_option, print_json, print_table
from schemas.errors import InvalidArgument


def format_estimate(summary: dict[str, Any]) -> str:
    """``0.712 [0.651, 0.770]`` (value and 95% interval), or the value alone."""
    text = f"{summary['value']:.4g}"
    ci = summary.get("ci95")
    if ci:
        text += f" [{ci[0]:.4g}, {ci[1]:.4g}]"
    return text


def format_delta(delta: dict[str, Any] | None) -> str:
    if not delta:
        return ""
    if "ratio" in delta:
        return f"x{delta['ratio']:.4g} [{delta['ci95'][0]:.4g}, {delta['ci95'][1]:.4g}]"
    return f"{delta['value']:+.4g} [{delta['ci95'][0]:+.4g}, {delta['ci95'][1]:+.4g}]"


def _int_list(option: str, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise InvalidArgument(
            f"{option} {value!r}: expected comma-separated integers, e.g. 16,64"
        ) from None


def eval_progress(label: str, total: int) -> Any:
    from hub.progress import count_progress

    return count_progress(f"eval {label}", total, unit="seq")


@click.command(name="eval")
@click.argument("refs", nargs=-1)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="JSONL: {text} | {prompt, target} | {prompt, choices, answer} rows.",
)
@click.option("--base", help="Base model folder or registry reference (default: the card's).")
@click.option("--metric", "metrics", multiple=True, help="Only this metric (repeatable).")
@click.option("--limit", type=int, help="Score only the first N rows.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True
)
@click.option("--no-base", is_flag=True, help="Do not score the base model for comparison.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option(
    "--forgetting",
    type=click.Path(path_type=Path),
    help="JSONL of general {text} rows: record the change in per-token cross-entropy on it"
    " against the base (forgetting), with a 95% interval.",
)
@click.option(
    "--cost",
    is_flag=True,
    help="Also measure inference cost: base, unmerged and merged latency, memory, load and"
    " merge time, merged-vs-unmerged output differences.",
)
@click.option("--cost-runs", type=int, help="Timed runs per configuration (>= 10; default 10).")
@click.option("--cost-warmup", type=int, help="Untimed runs first (default 2 on CPU, 3 on GPU).")
@click.option(
    "--cost-lengths",
    help="Prompt lengths in tokens, comma-separated (default 16,64 on CPU, 128,512 on GPU).",
)
@click.option("--cost-batch-sizes", help="Batch sizes, comma-separated (default 1,8).")
@click.option(
    "--cost-new-tokens", type=int, help="Tokens generated per run (default 8 on CPU, 32 on GPU)."
)
@click.option(
    "--chat", is_flag=True, help="Wrap each prompt in the base tokenizer's chat template."
)
@click.option(
    "--rerun",
    "rerun_id",
    metavar="EVAL_ID",
    help="Repeat a recorded eval (its stored dataset and config) and report any difference;"
    " exits 1 when a metric differs.",
)
@click.option(
    "--tolerance",
    type=float,
    default=1e-4,
    show_default=True,
    help="--rerun: relative tolerance for metrics that are not counts (counts must match).",
)
@click.option(
    "--from",
    "remote",
    help="Evaluate versions of a team hub at this URL (HUB_TOKEN); the record is posted back"
    " with a write token, else kept in the local registry.",
)
@lm_eval_options
@json_option
@click.pass_context
def eval_command(
    ctx: click.Context,
    refs: tuple[str, ...],
    data: Path | None,
    base: str | None,
    metrics: tuple[str, ...],
    limit: int | None,
    batch_size: int,
    device: str,
    dtype: str,
    no_base: bool,
    seed: int,
    forgetting: Path | None,
    cost: bool,
    cost_runs: int | None,
    cost_warmup: int | None,
    cost_lengths: str | None,
    cost_batch_sizes: str | None,
    cost_new_tokens: int | None,
    chat: bool,
    rerun_id: str | None,
    tolerance: float,
    remote: str | None,
    lm_eval_task: str | None,
    include_path: Path | None,
    as_json: bool,
) -> None:
    """Measure adapters on a JSONL file (or a local lm-eval task) and record the results.

    For each adapter and metric: the value, n, standard error and a seeded 95% bootstrap
    interval; unless --no-base, the base model on the same rows and the paired difference.
    The dataset and the per-example scores are stored with the record (see `hub show`).
    Stacks and ensembles run through their own runner (an ensemble's members in one batch).
    With --lm-eval TASK --include-path DIR, lm-evaluation-harness's own evaluator scores a
    local task YAML instead (offline; the record has the same fields, its log is kept).

    --rerun EVAL_ID repeats a recorded eval from its stored dataset and config (its
    --forgetting text and --cost options too) and records the rerun as a new record linked to
    the old one; counts (exact_match, accuracy) must match exactly, other metrics and
    forgetting within --tolerance (relative); cost timings are re-measured, not compared.
    --from URL pulls each version of a team hub into a scratch folder, evaluates it here, and
    posts the record back when the token may write the namespace (else keeps it locally:
    `hub show REF --from URL` lists it). Several adapters are recorded all or none.

    \b
    Example:
        hub eval team/sql-lora team/sql-dora --data sql-dev.jsonl --base models/llama
        hub eval team/sql-lora --data sql-dev.jsonl --metric exact_match --limit 200 --json
        hub eval team/sql-lora --data sql-dev.jsonl --forgetting wiki.jsonl --cost
        hub eval team/chat-lora --data qa.jsonl --base models/llama --chat
        hub eval --rerun ev-3f9a1c2b7d4e
        hub eval team/sql-lora --from http://hub.internal:8000 --data dev.jsonl --base models/llama
        hub eval team/sql-lora --lm-eval sql_choice --include-path tasks/
    """
    registry = registry_of(ctx)
    if rerun_id is not None:
        if refs or data is not None or remote:
            raise InvalidArgument(
                "--rerun takes only an eval id (and optionally --base, --device, --tolerance):"
                " the adapter, data and config are the record's"
            )
        _print_rerun(
            registry.rerun_eval(
                rerun_id,
                base=base,
                device=None if device == "auto" else device,
                tolerance=tolerance,
                progress=eval_progress,
            ),
            as_json,
        )
        return
    if lm_eval_task is not None and (remote or chat or cost or forgetting is not None):
        raise InvalidArgument(
            "--lm-eval runs lm-eval's own evaluator on a local version: --from, --chat, --cost"
            " and --forgetting apply to --data evals only"
        )
    if lm_eval_task is None and include_path is None and (not refs or data is None):
        raise InvalidArgument(NEEDS_DATA)
    records = lm_eval_records(
        registry, refs, lm_eval_task, include_path, data=data, metrics=metrics,
        base=base, limit=limit, batch_size=batch_size, device=device, dtype=dtype,
        with_base=not no_base, seed=seed,
    )  # fmt: skip
    if records is None:
        assert data is not None  # NEEDS_DATA above
        options: dict[str, Any] = dict(
            base=base,
            metrics=metrics,
            limit=limit,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            with_base=not no_base,
            seed=seed,
            forgetting=forgetting,
            cost=cost,
            cost_options={
                "runs": cost_runs,
                "warmup": cost_warmup,
                "prompt_lengths": _int_list("--cost-lengths", cost_lengths),
                "batch_sizes": _int_list("--cost-batch-sizes", cost_batch_sizes),
                "new_tokens": cost_new_tokens,
            },
            chat=chat,
            progress=eval_progress,
        )
        if remote:
            from cli.remote import remote_registry
            from hub.remote_evals import evaluate_remote

            hub_remote = remote_registry(remote)
            records = evaluate_remote(registry, hub_remote, list(refs), data, **options)
        else:
            records = registry.evaluate(list(refs), data, **options)
    if as_json:
        print_json(records)
    else:
        _print_records(records)
    for record in records if remote or not as_json else ():  # where it went matters with --from
        where = ""
        if record.get("remote"):
            kept = record["remote"]
            where = (
                f" at {kept['url']}"
                if kept["posted"]
                else f" locally ({kept['url']} refused it: {kept['reason']})"
            )
        click.echo(
            f"Recorded {record['id']} on {record['ref']}{where} ({record['dataset']['name']},"
            f" {record['seconds']:.1f}s)",
            err=True,
        )


def _print_records(records: list[dict[str, Any]]) -> None:
    rows = []
    for record in records:
        for name, summary in record["metrics"].items():
            base_summary = (record.get("base") or {}).get("metrics", {}).get(name)
            rows.append(
                [
                    record["ref"].split("@")[0],
                    name,
                    format_estimate(summary),
                    format_estimate(base_summary) if base_summary else "",
                    format_delta((record.get("delta") or {}).get(name)),
                    summary["n"],
                ]
            )
    print_table(["adapter", "metric", "value [95% CI]", "base", "delta [95% CI]", "n"], rows)
    for record in records:
        for line in extra_lines(record):
            click.echo(f"{record['ref'].split('@')[0]}  {line}")


def _print_rerun(record: dict[str, Any], as_json: bool) -> None:
    rerun = record["rerun"]
    if as_json:
        print_json(record)
    else:
        rows = []
        for name, d in rerun["differences"].items():
            if d.get("compared") == "count":
                how = f"{d['old_count']} -> {d['new_count']} correct"
                if d["changed_rows"]:
                    how += f", rows changed: {', '.join(map(str, d['changed_rows'][:10]))}"
            elif d["new"] is None:
                how = "missing in the rerun"
            elif d.get("compared") == "exact":
                how = f"{d['difference']:+.3g} (compared exactly)"
            else:
                how = f"{d['difference']:+.3g} (tolerance {d['tolerance']:g} relative)"
            new = "" if d["new"] is None else f"{d['new']:.6g}"
            verdict = "same" if d["agrees"] else "DIFFERS"
            rows.append([name, f"{d['old']:.6g}", new, how, verdict])
        print_table(["metric", "recorded", "rerun", "difference", ""], rows)
        cost = rerun.get("cost")
        for mode, t in ((cost or {}).get("timings") or {}).items():
            (old_ms, new_ms), (old_tps, new_tps) = t["prefill_ms"], t["decode_tokens_per_s"]
            click.echo(
                f"cost {mode} (batch {t['batch']}, {t['prompt_tokens']} tokens): prefill"
                f" {old_ms:.3g} -> {new_ms:.3g} ms, decode {old_tps:.3g} -> {new_tps:.3g}"
                " tokens/s (re-measured; timings are not compared)"
            )
    if rerun["reproduced"]:
        click.echo(f"Reproduced {rerun['of']} as {record['id']} on {record['ref']}", err=True)
        return
    differing = ", ".join(n for n, d in rerun["differences"].items() if not d["agrees"])
    click.echo(
        f"Rerun {record['id']} of {rerun['of']} differs in {differing} (recorded both)", err=True
    )
    click.get_current_context().exit(1)


@click.group()
def metric() -> None:
    """Results reported by hand on existing versions (measured ones come from `hub eval`)."""


@metric.command(name="add")
@click.argument("ref")
@click.argument("spec", metavar="NAME=VALUE[@DATASET]")
@click.option("--ci", help="95% interval LO,HI.")
@click.option("--n", "n", type=int, help="Number of examples behind the value.")
@click.option(
    "--higher-is-better/--lower-is-better",
    default=None,
    help="The metric's direction; default from its name, as at push (losses, perplexity,"
    " error rates are lower-is-better).",
)
@json_option
@click.pass_context
def metric_add(
    ctx: click.Context,
    ref: str,
    spec: str,
    ci: str | None,
    n: int | None,
    higher_is_better: bool | None,
    as_json: bool,
) -> None:
    """Record a result on an existing version (source `manual`); the files do not change.

    \b
    Example:
        hub metric add team/sql-lora@v2 exact_match=0.71@spider --ci 0.66,0.76 --n 1034
    """

    interval = None
    if ci is not None:
        lo, sep, hi = ci.partition(",")
        try:
            interval = (float(lo), float(hi))
        except ValueError:
            interval = None
        if not sep or interval is None:
            raise InvalidArgument(f"invalid --ci {ci!r}: expected LO,HI, e.g. 0.66,0.76")
    record = registry_of(ctx).add_metric(
        ref, spec, ci=interval, n=n, higher_is_better=higher_is_better
    )
    if as_json:
        print_json(record)
        return
    name, summary = next(iter(record["metrics"].items()))
    click.echo(f"Recorded {name}={format_estimate(summary)} on {record['ref']} ({record['id']})")
