"""``hub eval --rerun EVAL_ID``: repeat a recorded eval and report what changed.

The eval is repeated from what its record stored: the dataset blob (written back under its
original name, so the new record names the same dataset), the whole config (metrics, limit,
batch size, dtype, device, seed, base, chat template, the ``--forgetting`` text, which is
stored as a blob too, and the ``--cost`` options) and the exact version. The new record
is stored like any other, with ``"rerun": {"of": OLD_ID, "reproduced", "differences"}``.

Differences, per metric (and per metric of the base, when the base was scored):

- counting metrics (every per-example score 0 or 1: ``exact_match``, ``accuracy``...) compare
  the number of correct examples, exactly, and list the rows whose score changed;
- the others (``cross_entropy``, ``perplexity``, ``target_logprob``) agree when
  ``|new - old| <= tolerance * max(1, |old|)``; the default tolerance, 1e-4, is far above the
  run-to-run spread of fp32 on one machine (~1e-7) and below any change that matters. Other
  BLAS kernels, another device or dtype can move them more: pass ``--tolerance``.
- ``forgetting`` (adapter minus base cross-entropy on the general text) like those, and the
  documents and tokens scored must be the same.
- ``cost`` is timing: latency, memory, load and merge times are measured again and reported
  (``rerun["cost"]``), never compared, since they vary from run to run and machine to
  machine. Only its deterministic parts are compared, exactly: the merged-vs-unmerged greedy
  agreement on the probe prompts (``cost:greedy_token_agreement``,
  ``cost:greedy_sequence_agreement``) and a prompt method's extra tokens
  (``cost:extra_tokens``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.errors import AdapterNotFound, InvalidArgument, InvalidName, RevisionNotFound

if TYPE_CHECKING:
    from hub.registry import Registry
    from schemas.card import AdapterCard

DEFAULT_TOLERANCE = 1e-4


def find_record(registry: Registry, eval_id: str) -> tuple[AdapterCard, dict[str, Any]]:
    """The version an eval record is on, and the record.

    Raises:
        InvalidArgument: no record has this id.
    """
    row = registry.catalog.eval_record(eval_id)
    if row is None:
        raise InvalidArgument(
            f"no eval record {eval_id!r} in the registry at {registry.home}"
            " (`hub show REF` lists a version's eval ids)"
        )
    return registry.show(f"{row.repo}@{row.commit}"), row.record


def rerun(
    registry: Registry,
    eval_id: str,
    *,
    base: str | os.PathLike[str] | None = None,
    device: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: Callable[[str, int], Any] | None = None,
) -> dict[str, Any]:
    """Repeat the eval ``eval_id`` and compare.

    Args:
        base: the base model, if the recorded one (a folder path or registry reference) is
            not available here.
        device: run on another device than the recorded one (``auto``, ``cpu``, ``cuda``).
        tolerance: relative tolerance for metrics that are not counts (see the module doc).

    Returns:
        The new record; its ``"rerun"`` says ``of``, ``reproduced`` (every metric agrees) and
        ``differences`` (metric -> {"old", "new", "difference", "agrees", "compared": "count"
        with "changed_rows", or "tolerance" with "tolerance"}).

    Raises:
        InvalidArgument: unknown id, a record that was not measured here (manual, imported),
            a tolerance that is negative, a recorded base that is not here.
        StoreCorrupted: the dataset blob is missing or damaged.
    """
    from hub.evals import EVAL_SOURCE

    if not tolerance >= 0:
        raise InvalidArgument(f"--tolerance must be a non-negative number, got {tolerance}")
    card, old = find_record(registry, eval_id)
    dataset = old.get("dataset") or {}
    config = old.get("config") or {}
    if old.get("source") != EVAL_SOURCE or not dataset.get("sha256") or not config:
        raise InvalidArgument(
            f"{eval_id} is a {old.get('source')} record: only `hub eval` records keep the"
            " dataset and config a re-run needs"
        )
    chosen_base = base if base is not None else _recorded_base(registry, old, eval_id)
    with registry.scratch("eval") as tmp:
        data = tmp / (Path(dataset.get("name") or "data.jsonl").name or "data.jsonl")
        registry.store.copy_out(dataset["sha256"], data, description=f"dataset of {eval_id}")
        general = None
        if config.get("forgetting"):  # its own folder: it may have the dataset's name
            recorded = config["forgetting"]
            (tmp / "forgetting").mkdir()
            general = tmp / "forgetting" / (Path(recorded.get("file") or "").name or "text.jsonl")
            registry.store.copy_out(
                recorded["sha256"], general, description=f"forgetting text of {eval_id}"
            )
        cost = config.get("cost")

        def link(record: dict[str, Any], per_example: bytes) -> None:
            rows = [json.loads(line) for line in per_example.decode().splitlines() if line]
            differences = compare_records(registry, old, record, rows, tolerance)
            record["rerun"] = {
                "of": eval_id,
                "reproduced": all(d["agrees"] for d in differences.values()),
                "tolerance": tolerance,
                "differences": differences,
                "cost": remeasured_cost(old.get("cost"), record.get("cost")),
            }

        [record] = registry.evaluate(
            card.ref,
            data,
            base=chosen_base,
            metrics=list(config.get("metrics") or old["metrics"]),
            limit=config.get("limit"),
            batch_size=config.get("batch_size", 8),
            device=device or config.get("device", "auto"),
            dtype=config.get("dtype", "fp32"),
            with_base=bool(config.get("with_base", old.get("base") is not None)),
            seed=config.get("seed", 0),
            chat=bool(config.get("chat", False)),
            forgetting=general,
            cost=bool(cost),
            cost_options=(
                {k: tuple(v) if isinstance(v, list) else v for k, v in cost.items()}
                if cost
                else None
            ),
            progress=progress,
            annotate=link,
        )
    return record


def _recorded_base(registry: Registry, record: dict[str, Any], eval_id: str) -> str | None:
    """The base the record was scored against, if it is still here; None: the card's.

    Records keep a folder's resolved path; older ones kept it as given, relative to where
    that eval ran, which is tried from here and then as a registry reference.
    """
    given = (record.get("config") or {}).get("base") or (record.get("base") or {}).get("model")
    if given is None:
        return None
    if Path(given).is_dir():
        return str(given)
    if os.path.isabs(given):
        raise InvalidArgument(
            f"{eval_id} was scored against the base {given}, which is not a folder here:"
            " give --base DIR (the same base model)"
        )
    try:
        registry.show(given)
    except (AdapterNotFound, RevisionNotFound, InvalidName):
        raise InvalidArgument(
            f"{eval_id} was scored against the base {given!r}, which is neither a folder here"
            " nor an adapter in the registry (a relative path is read from the current"
            " directory): give --base DIR (the same base model)"
        ) from None
    return str(given)


def _per_example(registry: Registry, record: dict[str, Any]) -> list[dict[str, Any]]:
    digest = record.get("results_sha256")
    if not digest:
        return []
    text = registry.store.read_bytes(digest).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def compare_records(
    registry: Registry,
    old: dict[str, Any],
    new: dict[str, Any],
    new_rows: list[dict[str, Any]],
    tolerance: float,
) -> dict[str, dict[str, Any]]:
    """Per metric (``NAME`` for the adapter, ``base:NAME`` for the base): how ``new`` (with
    its per-example rows ``new_rows``) differs from ``old``."""
    from compose.eval_stats import is_binary

    old_rows = _per_example(registry, old)
    out: dict[str, dict[str, Any]] = {}
    pairs = [(name, name, old["metrics"], new["metrics"]) for name in old["metrics"]]
    if old.get("base") and new.get("base"):
        pairs += [
            (f"base:{name}", f"base_{name}", old["base"]["metrics"], new["base"]["metrics"])
            for name in old["base"]["metrics"]
        ]
    for label, column, old_metrics, new_metrics in pairs:
        before = old_metrics[label.removeprefix("base:")]
        after = new_metrics.get(label.removeprefix("base:"))
        if after is None:
            out[label] = {"old": before["value"], "new": None, "agrees": False}
            continue
        old_scores = [r[column] for r in old_rows if column in r]
        new_scores = [r[column] for r in new_rows if column in r]
        entry: dict[str, Any] = {
            "old": before["value"],
            "new": after["value"],
            "difference": after["value"] - before["value"],
        }
        if old_scores and new_scores and is_binary(old_scores) and is_binary(new_scores):
            changed = [
                i for i, (a, b) in enumerate(zip(old_scores, new_scores, strict=False)) if a != b
            ]
            entry.update(
                compared="count",
                old_count=int(sum(old_scores)),
                new_count=int(sum(new_scores)),
                changed_rows=changed,
            )
            entry["agrees"] = (
                entry["old_count"] == entry["new_count"]
                and before.get("n") == after.get("n")
                and not changed
            )
        else:
            bound = tolerance * max(1.0, abs(before["value"]))
            entry.update(compared="tolerance", tolerance=tolerance)
            entry["agrees"] = abs(entry["difference"]) <= bound and before.get("n") == after.get(
                "n"
            )
        out[label] = entry
    if old.get("forgetting"):
        out["forgetting"] = _forgetting_difference(
            old["forgetting"], new.get("forgetting"), tolerance
        )
    if old.get("cost"):
        out.update(_cost_differences(old["cost"], new.get("cost") or {}))
    return out


def _forgetting_difference(
    before: dict[str, Any], after: dict[str, Any] | None, tolerance: float
) -> dict[str, Any]:
    """Forgetting compared like a likelihood metric, on the same documents and tokens."""
    if after is None:
        return {"old": before["value"], "new": None, "agrees": False}
    difference = after["value"] - before["value"]
    same_tokens = (before.get("documents"), before.get("tokens")) == (
        after.get("documents"),
        after.get("tokens"),
    )
    return {
        "old": before["value"],
        "new": after["value"],
        "difference": difference,
        "compared": "tolerance",
        "tolerance": tolerance,
        "agrees": abs(difference) <= tolerance * max(1.0, abs(before["value"])) and same_tokens,
    }


def _deterministic_cost(cost: dict[str, Any]) -> dict[str, float]:
    """The parts of a ``cost`` that do not depend on timing (see the module doc)."""
    out: dict[str, float] = {}
    merge = cost.get("merge") or {}
    for name in ("greedy_token_agreement", "greedy_sequence_agreement"):
        if merge.get(name) is not None:
            out[f"cost:{name}"] = merge[name]
    prompt = cost.get("prompt") or {}
    if prompt.get("extra_tokens") is not None:
        out["cost:extra_tokens"] = prompt["extra_tokens"]
    return out


def _cost_differences(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    old, new = _deterministic_cost(before), _deterministic_cost(after)
    out = {}
    for name, value in old.items():
        got = new.get(name)
        out[name] = {
            "old": value,
            "new": got,
            "agrees": got == value,
            **({"difference": got - value, "compared": "exact"} if got is not None else {}),
        }
    return out


def remeasured_cost(
    before: dict[str, Any] | None, after: dict[str, Any] | None
) -> dict[str, Any] | None:
    """What the rerun measured again without comparing it: per mode, the median prefill
    latency and decode throughput of the first configuration (batch and prompt length), old
    and new. None when the record has no cost."""
    if not before or not after:
        return None
    timings = {}
    for mode, old_mode in before.get("modes", {}).items():
        new_mode = after.get("modes", {}).get(mode)
        if not new_mode or not old_mode.get("configs") or not new_mode.get("configs"):
            continue
        first_old, first_new = old_mode["configs"][0], new_mode["configs"][0]
        timings[mode] = {
            "batch": first_new["batch"],
            "prompt_tokens": first_new["prompt_tokens"],
            "prefill_ms": [first_old["prefill_ms"]["median"], first_new["prefill_ms"]["median"]],
            "decode_tokens_per_s": [
                first_old["decode_tokens_per_s"],
                first_new["decode_tokens_per_s"],
            ],
        }
    return {
        "remeasured": True,
        "compared": sorted(_deterministic_cost(before)),
        "not_compared": "latency, memory, load and merge times (they vary from run to run)",
        "timings": timings,
    }
