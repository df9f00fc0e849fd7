"""``hub eval --lm-eval TASK``: lm-evaluation-harness runs recorded like native evals.

The task is a local YAML (``compose.lm_eval_backend.find_task``); each adapter is the exact
version the registry materializes, loaded by the same code as a native eval, and scored by
lm-eval's own evaluator. The record has the shape of a native one (``hub.evals``): an id, the
commit, ``dataset`` (the sha256 of the evaluated split's data file, stored as a blob, its row
count, ``kind: lm-eval:<output_type>``), every metric with value, n, stderr and a seeded 95%
bootstrap interval, the base and the paired delta unless ``with_base=False``, the whole config
(the task YAML's text and digest, lm-eval's version and the config it ran), package versions,
device and time. The per-example blob is one JSON line per document: the metrics' per-example
scores under the record's names (what ``hub compare`` pairs) and lm-eval's own per-sample log
under ``lm_eval`` (``base_lm_eval`` for the base).

Metric names: ``acc`` becomes ``accuracy`` (the same definition); others keep lm-eval's name.
A metric lm-eval aggregates by a mean gets hub's seeded bootstrap interval over the documents;
a corpus-level one (``perplexity``, ``bleu``...) keeps lm-eval's value and stderr, no interval.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.catalog.rows import utcnow
from hub.eval_fit import check_fit, misfit
from hub.eval_store import Made, store_records
from schemas.errors import InvalidArgument, InvalidData

if TYPE_CHECKING:
    from compose.lm_eval_backend import LmEvalRun, LmEvalTask
    from hub.registry import Registry
    from schemas.card import AdapterCard

LM_EVAL_SOURCE = "lm-eval"


def evaluate_lm_eval(
    registry: Registry,
    refs: Sequence[str],
    task: str,
    include_path: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "fp32",
    with_base: bool = True,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Score each adapter of ``refs`` on a local lm-eval task and record it on its version.

    Args:
        refs: registry references (adapters, stacks).
        task: the task's name in ``include_path``.
        include_path: a folder of lm-eval task YAMLs (only it is searched).
        base, limit, batch_size, device, dtype, with_base, seed: as for ``hub.evals.evaluate``.

    Returns:
        One record per adapter, as stored.

    Raises:
        InvalidArgument: lm-eval missing, no such task, data that is not local, bad options.
        InvalidData: a data file that is missing or that lm-eval cannot read.
        IncompatibleAdapters, AdapterNotFound, RevisionNotFound.

    Example:
        >>> reg.evaluate_lm_eval(["team/sql-lora"], "sql_choice", "tasks/")  # doctest: +SKIP
    """
    from compose.lm_eval_backend import find_task, lm_eval_version
    from hub.evals import DTYPES, _base

    lm_eval_version()
    if limit is not None and limit <= 0:
        raise InvalidArgument(f"--limit must be a positive number of rows, got {limit}")
    if batch_size <= 0:
        raise InvalidArgument(f"--batch-size must be positive, got {batch_size}")
    if dtype not in DTYPES:
        raise InvalidArgument(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    resolved = find_task(task, include_path)
    cards = [registry.show(ref) for ref in refs]
    for card in cards:
        if card.method == "composite" and (card.details or {}).get("kind") == "ensemble":
            raise InvalidArgument(
                f"{card.ref} is a prompt ensemble: evaluate its members (ensemble scoring is not"
                " part of hub eval yet)"
            )
    config = {
        "backend": "lm-eval",
        "task": task,
        "include_path": str(Path(include_path).resolve()),
        "limit": limit,
        "batch_size": batch_size,
        "device": device,
        "dtype": dtype,
        "with_base": with_base,
        "seed": seed,
        "resamples": _resamples(),
        "task_yaml": {
            "path": str(resolved.yaml_path),
            "sha256": resolved.yaml_sha256,
            # The text itself: the record must say what ran even after the file changes.
            "text": resolved.yaml_path.read_text(encoding="utf-8", errors="replace"),
        },
    }
    made: list[Made] = []
    base_runs: dict[str, LmEvalRun] = {}  # one base run per base folder, for many adapters
    with tempfile.TemporaryDirectory(prefix="hub-lm-eval-") as tmp:
        prepared = []  # every adapter checked against its base before anything is scored
        for i, card in enumerate(cards):
            base_dir, base_label = _base(registry, base, card, Path(tmp) / f"base-{i}")
            folder = Path(tmp) / f"adapter-{i}"
            registry.link_files(card, folder)
            check_fit(card, folder, base_dir, base_label)
            prepared.append((card, base_dir, base_label, folder))
        for card, base_dir, base_label, folder in prepared:
            made.append(
                _evaluate_one(card, resolved, base_dir, base_label, config, folder, base_runs)
            )
        # Recorded whole or not at all, as hub eval's native runs are (hub.eval_store).
        store_records(registry, made)
    return [m.record for m in made]


def _resamples() -> int:
    from compose.eval_stats import DEFAULT_RESAMPLES

    return DEFAULT_RESAMPLES


def _run(task: LmEvalTask, model: Any, tokenizer: Any, config: dict[str, Any]) -> LmEvalRun:
    from compose.lm_eval_backend import run_task

    return run_task(
        task,
        model,
        tokenizer,
        batch_size=config["batch_size"],
        limit=config["limit"],
        seed=config["seed"],
        resamples=config["resamples"],
    )


def _evaluate_one(
    card: AdapterCard,
    task: LmEvalTask,
    base_dir: Path,
    base_label: str,
    config: dict[str, Any],
    scratch: Path,
    base_runs: dict[str, LmEvalRun],
) -> Made:
    from compose.composites import load_composed
    from compose.evaluate import device_for
    from hub.evals import _tokenizer
    from hub.evals import load_base_model as _load_model

    started = time.perf_counter()
    device = device_for(config["device"])
    tokenizer = _tokenizer(base_dir)
    base_run = None
    if config["with_base"]:
        key = str(base_dir.resolve())
        if key not in base_runs:
            base_model = _load_model(base_dir, config["dtype"], device)
            base_runs[key] = _run(task, base_model, tokenizer, config)
            del base_model
        base_run = base_runs[key]
    try:
        model = load_composed(_load_model(base_dir, config["dtype"], device), scratch)
    except (RuntimeError, ValueError, KeyError) as err:
        raise misfit(card, base_label, err) from None
    run = _run(task, model, tokenizer, config)
    del model
    return _record(
        card,
        task,
        run,
        base_run,
        base_label,
        config,
        device,
        time.perf_counter() - started,
    )


def summaries(run: LmEvalRun, seed: int) -> dict[str, dict[str, Any]]:
    """Each metric as a native record has it: value, n, stderr, ci95, higher_is_better, and
    ``lm_eval_stderr`` (lm-eval's own, for comparison)."""
    from compose.eval_stats import estimate

    out = {}
    for name, metric in run.metrics.items():
        summary: dict[str, Any] = {
            "value": metric.value,
            "n": len(run.doc_ids),
            "stderr": metric.lm_eval_stderr,
            "ci95": None,
            "higher_is_better": metric.higher_is_better,
            "lm_eval_stderr": metric.lm_eval_stderr,
        }
        if metric.is_mean and metric.per_example:
            est = estimate(metric.per_example, seed=seed)
            summary.update(n=est.n, stderr=est.stderr, ci95=list(est.ci95))
        out[name] = summary
    return out


def _deltas(run: LmEvalRun, base: LmEvalRun, seed: int) -> dict[str, dict[str, Any]]:
    """Paired differences, document by document, for the metrics that are means."""
    from compose.eval_stats import paired_delta

    if run.doc_ids != base.doc_ids:
        raise InvalidData("lm-eval scored different documents for the adapter and the base")
    out = {}
    for name, metric in run.metrics.items():
        theirs = base.metrics.get(name)
        if not (metric.is_mean and metric.per_example and theirs and theirs.per_example):
            continue
        d = paired_delta(metric.per_example, theirs.per_example, seed=seed)
        out[name] = {"value": d.value, "ci95": list(d.ci95), "p_value": d.p_value}
    return out


def _per_example_blob(run: LmEvalRun, base: LmEvalRun | None) -> bytes:
    lines = []
    for i, doc_id in enumerate(run.doc_ids):
        row: dict[str, Any] = {"row": i, "doc_id": doc_id}
        for name, metric in run.metrics.items():
            if metric.per_example:
                row[name] = metric.per_example[i]
        if base is not None:
            for name, metric in base.metrics.items():
                if metric.per_example:
                    row[f"base_{name}"] = metric.per_example[i]
        row["lm_eval"] = run.samples[i]
        if base is not None:
            row["base_lm_eval"] = base.samples[i]
        lines.append(json.dumps(row, sort_keys=True) + "\n")
    return "".join(lines).encode()


def _record(
    card: AdapterCard,
    task: LmEvalTask,
    run: LmEvalRun,
    base_run: LmEvalRun | None,
    base_label: str,
    config: dict[str, Any],
    device: Any,
    seconds: float,
) -> Made:
    from hub.evals import _versions
    from hub.evals import device_label as _device_name

    seed = config["seed"]
    data = task.data_file
    versions = _versions()
    versions["lm-eval"] = run.config["lm_eval_version"]
    record: dict[str, Any] = {
        "id": f"ev-{uuid.uuid4().hex[:12]}",
        "ref": card.ref,
        "commit": card.commit,
        "source": LM_EVAL_SOURCE,
        "dataset": {
            "sha256": data.sha256,
            "rows": len(run.doc_ids),
            "kind": f"lm-eval:{task.output_type}",
            "name": task.name,
            "file": data.path.name,
            "files": [
                {"split": f.split, "path": str(f.path), "sha256": f.sha256} for f in task.files
            ],
        },
        "metrics": summaries(run, seed),
        "base": ({"model": base_label, "metrics": summaries(base_run, seed)} if base_run else None),
        "delta": _deltas(run, base_run, seed) if base_run else None,
        "cost": None,
        "config": {**config, "lm_eval": run.config},
        "versions": versions,
        "device": _device_name(device),
        "seconds": round(seconds, 3),
        "created_at": utcnow(),
    }
    # Stored with the others once every adapter is scored (store_records checks the
    # dataset's digest and sets results_sha256).
    return Made(card, record, data.path, _per_example_blob(run, base_run))
