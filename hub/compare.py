"""``hub compare``: adapters side by side, from their cards, eval records and weights.

- A table: method, variant, rank, targets, parameters, size, and each metric with its interval,
  taken from eval records on one dataset digest (the newest record per adapter and dataset).
  A column is ``METRIC@NAME`` per digest; ``METRIC@NAME#<digest prefix>`` when two digests
  compared share a file name.
- Significance: for every pair of adapters evaluated on the same rows of the same dataset, the
  paired difference of each metric (paired bootstrap; exact McNemar for 0/1 scores), with
  Holm-corrected p-values over all the pairs and metrics compared. ``perplexity`` is
  ``exp`` of the mean cross-entropy: its test is ``cross_entropy``'s, counted once.
- Weight-space similarity (``hub.compare_weights``, math in ``compose.similarity``): the
  overall cosine and relative distance of every pair, per-module cosines, principal angles,
  target overlap.
- Spectra: each module's singular values, effective and stable rank, utilisation.

Example:
    >>> report = compare(Registry(), ["team/sql-lora", "team/sql-dora"])    # doctest: +SKIP
    >>> report["similarity"]["cosine"]                                      # doctest: +SKIP
    [[1.0, 0.41], [0.41, 1.0]]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.card import LEDGER
from schemas.errors import InvalidArgument

if TYPE_CHECKING:
    from hub.registry import Registry
    from schemas.card import AdapterCard


def compare(
    registry: Registry,
    refs: Sequence[str],
    *,
    eval_ids: Sequence[str] = (),
    seed: int = 0,
    data: str | Path | None = None,
    **output_options: Any,
) -> dict[str, Any]:
    """Compare ``refs`` (at least two). ``eval_ids`` restricts the metrics to those records.
    With ``data``, also the output-space similarity on it (``hub.compare_extras``;
    ``output_options``: base, device, dtype, batch_size, limit). ``base`` (a folder or a
    reference; default each card's ``base_model``) also gives IA3, OFT and BOFT their weight
    deltas.

    Returns:
        ``{"adapters": [...], "significance": [...], "similarity": {...}, "spectra": {...}}``
        (the shape ``hub compare --json`` prints; see DESIGN.md).

    Raises:
        InvalidArgument (fewer than two adapters, an eval id of none of them),
        AdapterNotFound, RevisionNotFound.
    """
    if len(refs) < 2:
        raise InvalidArgument("hub compare needs at least two adapters")
    cards = [registry.show(ref) for ref in refs]
    records = {card.ref: registry.evals(card.ref) for card in cards}
    if eval_ids:
        wanted = set(eval_ids)
        known = {r["id"] for rs in records.values() for r in rs}
        if missing := sorted(wanted - known):
            raise InvalidArgument(
                f"eval {missing[0]} is not a record of any of the adapters compared"
                " (see `hub show REF` for their eval ids)"
            )
        records = {ref: [r for r in rs if r["id"] in wanted] for ref, rs in records.items()}
    latest = {ref: _latest_per_dataset(rs) for ref, rs in records.items()}
    from hub import compare_weights
    from hub.compare_extras import eval_columns, output_similarity

    labels = _dataset_labels(latest)
    adapters = [{**_row(card, latest[card.ref], labels), **eval_columns(records[card.ref])}
                for card in cards]  # fmt: skip
    significance = _significance(registry, cards, latest, labels, seed)
    found, skipped, notes = compare_weights.updates(registry, cards, output_options.get("base"))
    return {
        "adapters": adapters,
        "significance": significance,
        "similarity": compare_weights.similarity(cards, found, skipped, notes),
        "spectra": compare_weights.spectra(found),
        "output_similarity": (
            output_similarity(registry, cards, data, **output_options) if data else None
        ),
    }


NO_DATASET = "none:"
"""Key prefix of a record measured on no named dataset; its columns are the metric's name."""


def _latest_per_dataset(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """dataset key -> the newest record with per-example results on it (measured records only:
    a hand-typed metric has no examples to pair)."""
    out: dict[str, dict[str, Any]] = {}
    for record in records:  # oldest first, so later ones win
        dataset = record.get("dataset") or {}
        if dataset.get("sha256") or dataset.get("name"):
            key = dataset.get("sha256") or f"name:{dataset['name']}"
        else:  # no dataset (a Trainer's own numbers): each record keeps its values
            key = f"{NO_DATASET}{record['id']}"
        out[key] = record
    return out


def _dataset_labels(latest: dict[str, dict[str, dict[str, Any]]]) -> dict[str, str]:
    """Dataset key -> how its columns are named: the file name, unless another digest in the
    comparison has that name too; then each such digest adds its shortest unique prefix (at
    least 8 hex digits): ``text.jsonl#a5baf2f4``. One label per digest for every adapter."""
    names: dict[str, str] = {}
    for per_dataset in latest.values():
        for key, record in per_dataset.items():
            names[key] = (record.get("dataset") or {}).get("name") or ""
    digests: dict[str, list[str]] = {}
    for key, name in names.items():
        # a hand-typed metric's dataset has no digest; a Trainer's numbers have no dataset
        if not key.startswith(("name:", NO_DATASET)):
            digests.setdefault(name, []).append(key)
    labels = dict(names)
    for name, keys in digests.items():
        if len(keys) + (f"name:{name}" in names) < 2:
            continue
        width = 8
        while len({k[:width] for k in keys}) < len(keys):
            width += 1
        labels.update({k: f"{name}#{k[:width]}" for k in keys})
    return labels


def _row(
    card: AdapterCard, latest: dict[str, dict[str, Any]], labels: dict[str, str]
) -> dict[str, Any]:
    metrics: dict[str, dict[str, Any]] = {}
    for key, record in latest.items():
        for metric, summary in record["metrics"].items():
            metrics[f"{metric}@{labels[key]}" if labels[key] else metric] = {
                **summary,
                "dataset_sha256": (record.get("dataset") or {}).get("sha256"),
                "eval_id": record["id"],
                "delta_vs_base": (record.get("delta") or {}).get(metric),
            }
    overhead = card.inference_overhead
    return {
        "ref": card.ref,
        "repo": card.repo,
        "version": card.version,
        "library": card.library,
        "method": card.method,
        "variant": card.variant,
        "rank": card.rank,
        "targets": card.target_modules,
        **{name: getattr(card, name) for name in LEDGER},
        **{f"{name}_fraction": getattr(card, f"{name}_fraction") for name in LEDGER},
        "params_base": card.params_base,
        "params_unknown": card.params_unknown,
        "params_trainable": card.params_trainable,  # the old name of params_stored
        "params_fraction": card.params_fraction,
        "size_bytes": card.size_bytes,
        "overhead": (
            "none when merged"
            if overhead.none_when_merged
            else f"{overhead.extra_tokens} extra tokens"
            if overhead.extra_tokens
            else "extra layers"
        ),
        "metrics": metrics,
    }


def _per_example(registry: Registry, record: dict[str, Any]) -> list[dict[str, Any]] | None:
    digest = record.get("results_sha256")
    if not digest or not registry.store.has(digest):
        return None
    lines = registry.store.read_bytes(digest).decode().splitlines()
    return [json.loads(line) for line in lines]


def _significance(
    registry: Registry,
    cards: list[AdapterCard],
    latest: dict[str, dict[str, dict[str, Any]]],
    labels: dict[str, str],
    seed: int,
) -> list[dict[str, Any]]:
    """One paired test per pair, dataset and hypothesis, Holm-corrected over all of them.

    A record's per-example ``perplexity`` scores are its cross-entropies (perplexity is
    ``exp`` of their mean): next to ``cross_entropy`` it is the same hypothesis, so it is
    neither tested nor counted again. A record with ``perplexity`` alone gets one row whose
    ``ratio`` (``exp`` of the mean paired cross-entropy difference: the ratio of the two
    perplexities) and interval say it, as ``hub eval``'s delta against the base does.
    """
    import math

    from compose.eval_stats import holm, is_binary, mcnemar, paired_delta

    tests: list[dict[str, Any]] = []
    for i, first in enumerate(cards):
        for second in cards[i + 1 :]:
            for key, rec_a in latest[first.ref].items():
                rec_b = latest[second.ref].get(key)
                if rec_b is None or not (rec_a.get("dataset") or {}).get("sha256"):
                    continue
                if rec_a["dataset"]["rows"] != rec_b["dataset"]["rows"]:
                    continue  # different --limit: not the same examples
                rows_a, rows_b = _per_example(registry, rec_a), _per_example(registry, rec_b)
                if rows_a is None or rows_b is None:
                    continue
                shared = set(rec_a["metrics"]) & set(rec_b["metrics"])
                if "cross_entropy" in shared:
                    shared.discard("perplexity")  # the same test: see above
                for metric in sorted(shared):
                    a = [r[metric] for r in rows_a]
                    b = [r[metric] for r in rows_b]
                    binary = is_binary(a) and is_binary(b)
                    d = paired_delta(a, b, seed=seed)
                    test: dict[str, Any] = {
                        "a": first.ref,
                        "b": second.ref,
                        "dataset": labels[key],
                        "dataset_sha256": key,
                        "metric": metric,
                        "n": d.n,
                        "difference": d.value,
                        "ci95": list(d.ci95),
                        "test": "mcnemar" if binary else "paired bootstrap",
                        "p_value": (
                            mcnemar([x == 1.0 for x in a], [y == 1.0 for y in b])
                            if binary
                            else d.p_value
                        ),
                    }
                    if metric == "perplexity":  # a ratio: exp of the cross-entropy difference
                        test["difference"] = None
                        test["ratio"] = math.exp(d.value)
                        test["ci95"] = [math.exp(d.ci95[0]), math.exp(d.ci95[1])]
                    tests.append(test)
    for test, adjusted in zip(tests, holm([t["p_value"] for t in tests]), strict=True):
        test["p_holm"] = adjusted
        test["significant"] = adjusted <= 0.05
    return tests


AXES = (
    *LEDGER,
    *(f"{name}_fraction" for name in LEDGER),
    "size_bytes",
    "rank",
    "params_trainable",
    "params_fraction",
)
"""Card fields a Pareto plot can put on an axis (besides any metric of the table): the
parameter ledger, its fractions of the base, size and rank (and the ledger's old names)."""


def default_y_axis(adapters: Sequence[dict[str, Any]], x: str) -> str | None:
    """The metric column a Pareto plot of ``adapters`` (``compare``'s rows) puts on y when none
    is asked for, None without metrics. Of the columns, the one that:

    1. has a value for the most adapters that also have an ``x`` value (more points);
    2. then, whose values differ between those adapters (a flat line compares nothing: an
       exact match that is 0 for every adapter);
    3. then, a likelihood metric (``target_logprob``, ``cross_entropy``, ``perplexity``:
       continuous, so it separates adapters an argmax metric of a few rows ties);
    4. then, the first by name.

    Example:
        >>> rows = [{"params_trained": 8, "metrics": {"exact_match@d": {"value": 0.0},
        ...          "target_logprob@d": {"value": -2.0}}},
        ...         {"params_trained": 4, "metrics": {"exact_match@d": {"value": 0.0},
        ...          "target_logprob@d": {"value": -3.5}}}]
        >>> default_y_axis(rows, "params_trained")
        'target_logprob@d'
    """
    from compose.eval_data import LIKELIHOOD_METRICS
    from schemas.metrics import split_name

    def key(column: str) -> tuple[int, bool, bool, str]:
        values = [
            a["metrics"][column]["value"]
            for a in adapters
            if column in a["metrics"] and (x in a["metrics"] or a.get(x) is not None)
        ]
        likelihood = split_name(column)[0] in LIKELIHOOD_METRICS
        return -len(values), len(set(values)) < 2, not likelihood, column

    columns = {name for a in adapters for name in a["metrics"]}
    return min(columns, key=key) if columns else None


def write_plots(
    report: dict[str, Any], folder: Path, *, x: str = "params_trained", y: str | None = None
) -> list[Path]:
    """``pareto``, ``similarity`` and ``spectra`` as PNG and SVG in ``folder``.

    Args:
        x: a card field of ``AXES`` or a metric column (``NAME@DATASET``).
        y: a metric column; default ``default_y_axis``'s choice. Without any metric there
            is no Pareto plot.

    Raises:
        InvalidArgument: an axis that is neither a card field nor a metric of the table.
    """
    from compose.plots import Point, plot_heatmap, plot_pareto, plot_spectra

    adapters = report["adapters"]
    columns = sorted({name for a in adapters for name in a["metrics"]})
    for axis in (x, y):
        if axis is not None and axis not in AXES and axis not in columns:
            known = ", ".join([*AXES, *columns])
            raise InvalidArgument(f"--axes: {axis!r} is not one of {known}")
    written: list[Path] = []
    y = y or default_y_axis(adapters, x)
    if y is not None:

        def value(a: dict[str, Any], axis: str) -> float | None:
            got = a["metrics"][axis]["value"] if axis in a["metrics"] else a.get(axis)
            return None if got is None else float(got)

        points = []
        for a in adapters:
            px, py = value(a, x), value(a, y)
            if px is None or py is None:
                continue
            ci = a["metrics"][y].get("ci95") if y in a["metrics"] else None
            points.append(Point(a["repo"], px, py, ci[0] if ci else None, ci[1] if ci else None))
        higher = next((a["metrics"][y].get("higher_is_better") for a in adapters
                       if y in a["metrics"]), True)  # fmt: skip
        if points:
            written += plot_pareto(
                points,
                folder / "pareto",
                x_label=x,
                y_label=y,
                higher_is_better=higher is not False,
                log_x=x in (*LEDGER, "params_trainable", "size_bytes"),
            )
    sim = report["similarity"]
    labels = [ref.split("@")[0] for ref in sim["refs"]]
    written += plot_heatmap(labels, sim["cosine"], folder / "similarity", title="weight cosine")
    outputs = report.get("output_similarity")
    if outputs:
        written += plot_heatmap(
            labels,
            outputs["top1_agreement"],
            folder / "output-agreement",
            title="top-1 agreement",
            vmin=0.0,
        )
        kl = outputs["kl"]
        top = max([v for row in kl for v in row if v is not None] or [1.0]) or 1.0
        written += plot_heatmap(
            labels, kl, folder / "output-kl", title="mean KL (row || column)", vmin=0.0, vmax=top
        )
    curves = {
        ref.split("@")[0]: {m: s["cumulative_energy"] for m, s in modules.items()}
        for ref, modules in report["spectra"].items()
    }
    if curves:
        written += plot_spectra(curves, folder / "spectra")
    return written
