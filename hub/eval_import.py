"""Results that arrive with a pushed folder, imported as eval records with their provenance.

- ``all_results.json`` and ``eval_results.json``, what ``Trainer.save_metrics`` writes into the
  output folder (``{"eval_loss": 0.61, "eval_accuracy": 0.8, "eval_samples": 200, "epoch":
  3.0, "eval_runtime": ...}``): one record with source ``trainer`` per file, its metrics
  without the bookkeeping values (``hub.checkpoints``: runtimes, throughputs, FLOs, epoch),
  ``eval_samples`` / ``train_samples`` as the ``n`` of the ``eval_*`` / ``train_*`` metrics. A
  value ``trainer_state.json`` already gave, or ``all_results.json`` (which repeats
  ``eval_results.json``), is not repeated; its ``n`` goes to the one already read. No
  dataset: the Trainer does not say which.
- ``trainer_state.json`` (``hub.checkpoints``: the values logged at the weights' step, the best
  metric, the evaluation history), first.
- The README's ``model-index`` (``hub.model_index``): one record with source ``model-index``
  per result, on its dataset.

Each record names its file and the file's sha256 (``"origin"``); its id is derived from the
repository, the version's files and the origin, so pushing the same files again adds nothing.
The metrics join the card like those of ``hub eval`` (with the record's ``eval_id``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.folders import read_regular
from schemas.errors import InvalidAdapter

if TYPE_CHECKING:
    from schemas.card import FileEntry, Metric

TRAINER_RESULTS = ("all_results.json", "eval_results.json")
_MAX_BYTES = 16 << 20


@dataclass
class Imported:
    """One record to store with the version, and the card metrics it brings."""

    record: dict[str, Any]
    metrics: list[Metric] = field(default_factory=list)


def read_imports(folder: Path, known: Sequence[Metric] = ()) -> list[Imported]:
    """The records ``folder``'s Trainer result files and README ``model-index`` give.

    Args:
        known: metrics the push already has (``trainer_state.json``'s): not repeated.

    Raises:
        InvalidAdapter: a result file that is not a JSON object, or a malformed model-index
            (the message names the file and field).
    """
    from hub.model_index import README, read_model_index
    from schemas.card import Metric

    seen = {(m.name, m.value, m.dataset) for m in known}
    earlier = {(m.name, m.value, m.dataset): m for m in known}
    out: list[Imported] = []
    for name in TRAINER_RESULTS:
        data = read_regular(folder / name, _MAX_BYTES)
        if data is None:
            continue
        values, counts = _trainer_results(folder / name, data)
        metrics = {}
        for metric, value in values.items():
            n = counts.get(metric.split("_", 1)[0])
            if (metric, value, None) in seen:
                repeated = earlier.get((metric, value, None))
                if repeated is not None and repeated.n is None:
                    repeated.n = n  # trainer_state.json's value, counted here
                continue
            seen.add((metric, value, None))
            metrics[metric] = summary(metric, value, n)
        if metrics:
            origin = {"file": name, "sha256": hashlib.sha256(data).hexdigest()}
            out.append(_imported("trainer", {"name": None}, metrics, origin, Metric))
    results = read_model_index(folder)
    if results:
        digest = hashlib.sha256(read_regular(folder / README, 1 << 30) or b"").hexdigest()
    for result in results:
        metrics = {
            metric: {**summary(metric, spec["value"], None), "verified": spec["verified"]}
            for metric, spec in result["metrics"].items()
        }
        if not metrics:
            continue
        origin = {"file": README, "sha256": digest, "model-index": result["index"]}
        if result.get("model"):
            origin["model"] = str(result["model"])
        if result["task"]:
            origin["task"] = result["task"]
        out.append(_imported("model-index", result["dataset"], metrics, origin, Metric))
    return out


def summary(
    name: str, value: float, n: int | None, higher_is_better: bool | None = None
) -> dict[str, Any]:
    """An imported value as a record's metric summary (no interval: none was given); its
    direction from the name unless said."""
    from schemas.metrics import default_higher_is_better

    return {
        "value": value,
        "n": n,
        "stderr": None,
        "ci95": None,
        "higher_is_better": (
            default_higher_is_better(name) if higher_is_better is None else higher_is_better
        ),
    }


def _imported(
    source: str,
    dataset: dict[str, Any],
    metrics: dict[str, dict[str, Any]],
    origin: dict[str, Any],
    metric_cls: Any,
) -> Imported:
    record = {
        "source": source,
        "dataset": dataset,
        "metrics": metrics,
        "origin": origin,
        "base": None,
        "delta": None,
        "cost": None,
        "config": {},
        "versions": {},
    }
    cards = [
        metric_cls(
            name=name,
            value=s["value"],
            dataset=dataset.get("name"),
            source=source,
            n=s["n"],
            higher_is_better=s["higher_is_better"],
        )
        for name, s in metrics.items()
    ]
    return Imported(record, cards)


def _trainer_results(path: Path, data: bytes) -> tuple[dict[str, float], dict[str, int]]:
    from hub.checkpoints import _is_metric

    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidAdapter(f"{path} is not valid JSON ({error})", path=str(path)) from None
    if not isinstance(obj, dict):
        raise InvalidAdapter(
            f"{path} must hold a JSON object (what Trainer.save_metrics writes)", path=str(path)
        )
    counts = {
        key.removesuffix("_samples"): int(value)
        for key, value in obj.items()
        if key.endswith("_samples") and isinstance(value, int) and not isinstance(value, bool)
    }
    values = {
        key: float(value)
        for key, value in sorted(obj.items())
        if not key.endswith("_samples") and _is_metric(key, value)
    }
    return values, counts


def assign_ids(repo: str, entries: Sequence[FileEntry], imports: Sequence[Imported]) -> None:
    """Give each import its record id (and its metrics their ``eval_id``): a hash of the
    repository, the version's files and the origin, so the same push gives the same ids."""
    files = sorted([e.path, e.sha256] for e in entries)
    for item in imports:
        key = json.dumps(
            [repo, files, item.record["source"], item.record["origin"]], sort_keys=True
        )
        item.record["id"] = f"ev-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        for metric in item.metrics:
            metric.eval_id = item.record["id"]
