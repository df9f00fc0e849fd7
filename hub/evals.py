"""Evaluation records: ``hub eval`` runs, and metrics added after push, kept on the exact version.

An eval scores each adapter (and, unless told not to, the base with no adapter) on a local JSONL
file, then stores one record per adapter: the dataset's sha256 (the file itself is stored as a
blob so the eval can be re-run), its row count and kind, the whole config, package versions,
device, time taken, the per-example scores as a JSONL blob, and for every metric its value, n,
standard error and seeded 95% bootstrap interval, with the paired difference against the base.

An eval of several adapters is recorded whole or not at all (``hub.eval_store``). Records
hang off the version row (its commit id never changes); each metric also joins the
card's ``metrics`` list with ``source: "hub-eval"`` and the eval's id, so ``hub ls --sort
metric:NAME`` and ``card.metric(NAME)`` see it. The base's per-example scores are cached by
base, data digest and the config that changes scores, so evaluating ten adapters against one
base scores the base once.

Example:
    >>> records = Registry().evaluate(["team/sql-lora"], data="qa.jsonl")   # doctest: +SKIP
    >>> records[0]["metrics"]["exact_match"]["ci95"]                        # doctest: +SKIP
    [0.61, 0.74]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.catalog.rows import utcnow
from hub.eval_fit import check_fit, misfit
from hub.eval_store import BaseCache, LocalSink, Made, Sink, store_record
from schemas.errors import InvalidArgument

if TYPE_CHECKING:
    from compose.cost import CostOptions
    from compose.eval_data import EvalData
    from hub.registry import Registry
    from schemas.card import AdapterCard

DTYPES = ("fp32", "bf16", "fp16")
EVAL_SOURCE = "hub-eval"


def evaluate(
    registry: Registry,
    refs: Sequence[str],
    data: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    metrics: Sequence[str] = (),
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "fp32",
    with_base: bool = True,
    seed: int = 0,
    forgetting: str | os.PathLike[str] | None = None,
    cost: bool = False,
    cost_options: dict[str, Any] | None = None,
    chat: bool = False,
    progress: Callable[[str, int], Any] | None = None,
    sink: Sink | None = None,
    annotate: Callable[[dict[str, Any], bytes], None] | None = None,
) -> list[dict[str, Any]]:
    """Score each adapter of ``refs`` on ``data`` and record the result on its version.

    Args:
        refs: registry references (adapters, stacks).
        data: a JSONL file (see ``compose.eval_data`` for the three kinds).
        base: the base model (a folder, or a registry reference); defaults to each card's
            ``base_model`` when that is a folder here.
        metrics: a subset of what the data's kind gives; all of them by default.
        limit: score only the first ``limit`` rows.
        with_base: also score the base (adapter disabled) on the same rows and report the
            paired difference.
        seed: the bootstrap's seed (intervals are reproducible).
        forgetting: a ``{"text"}`` JSONL of general text: the record's ``forgetting`` is the
            change in per-token cross-entropy on it against the base (``hub.eval_forgetting``).
        cost: also measure inference cost, base vs unmerged vs merged (``hub.eval_cost``).
        cost_options: ``compose.cost.CostOptions`` fields (runs, warmup, batch_sizes,
            prompt_lengths, new_tokens) over the device's defaults.
        chat: wrap each prompt in the base tokenizer's chat template (``compose.eval_chat``).
        progress: ``progress(label, total)`` returns a bar with ``update(n)`` and ``close()``.
        sink: where the adapters come from and the records go (default: this registry;
            ``hub.remote_evals`` evaluates a team hub's versions).
        annotate: called with each record and its per-example results (JSONL bytes) just
            before it is stored (``hub eval --rerun`` links the new record to the old one).

    Returns:
        One record per adapter, as stored (``hub eval --json`` prints this list). Nothing is
        stored until every adapter has been scored; then all of it is (``hub.eval_store``):
        an error part-way records nothing, for any adapter, and caches no base score.

    Raises:
        InvalidData (the file, or a row that cannot be scored once tokenized),
        InvalidArgument (options, base), IncompatibleAdapters (an adapter that does not fit
        its base: every adapter is checked before anything is scored, ``hub.eval_fit``),
        AdapterNotFound, RevisionNotFound.
    """
    from compose.eval_data import check_metrics, read_eval_data

    if limit is not None and limit <= 0:
        raise InvalidArgument(f"--limit must be a positive number of rows, got {limit}")
    if batch_size <= 0:
        raise InvalidArgument(f"--batch-size must be positive, got {batch_size}")
    if dtype not in DTYPES:
        raise InvalidArgument(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    dataset = read_eval_data(Path(data), limit=limit)
    chosen = check_metrics(dataset, list(metrics))
    if chat and dataset.kind == "text":
        raise InvalidArgument(
            f"--chat wraps prompts in the chat template, but {dataset.path.name} holds text rows"
            " (no prompts): leave out --chat, or use prompt/target or prompt/choices rows"
        )
    sink = sink or LocalSink(registry)
    general = None
    if forgetting is not None:
        from hub.eval_forgetting import read_general_text

        general = read_general_text(Path(forgetting))
    cards = sink.cards(refs)
    for card in cards:
        _check_vote_ensemble(card, chosen, general is not None)
    resolved = None
    if cost:
        from compose.cost import defaults
        from compose.evaluate import device_for

        resolved = defaults(device_for(device).type, **(cost_options or {}))
        resolved.check()
    config = {
        "metrics": list(chosen),
        "limit": limit,
        "batch_size": batch_size,
        "device": device,
        "dtype": dtype,
        "with_base": with_base,
        "seed": seed,
        "resamples": _resamples(),
        "forgetting": {"file": general.path.name, "sha256": general.sha256} if general else None,
        "cost": resolved.as_dict() if resolved else None,
        "chat": chat,
    }
    cache = BaseCache(registry)
    made: list[Made] = []
    with tempfile.TemporaryDirectory(prefix="hub-eval-") as tmp:
        # Every adapter laid out and checked against its base before anything is scored.
        prepared = []
        for i, card in enumerate(cards):
            base_dir, base_label = _base(registry, base, card, Path(tmp) / f"base-{i}")
            folder = Path(tmp) / f"adapter-{i}"
            sink.files(card, folder)
            check_fit(card, folder, base_dir, base_label)
            prepared.append((card, base_dir, base_label, folder))
        for card, base_dir, base_label, folder in prepared:
            # The base as given (a folder, resolved, or a registry reference): what `--rerun`
            # scores.
            one_config = {**config, "base": base_label}
            made.append(
                _evaluate_one(
                    cache,
                    card,
                    dataset,
                    chosen,
                    base_dir,
                    base_label,
                    one_config,
                    folder,
                    progress,
                    annotate,
                    general=general,
                    cost=resolved,
                )
            )
        # Only now, every adapter scored, is anything stored: all of it (hub.eval_store).
        cache.flush()
        sink.keep(made)
    return [m.record for m in made]


def _check_vote_ensemble(card: AdapterCard, metrics: Sequence[str], forgetting: bool) -> None:
    """A voting ensemble gives probability 0 to every token no member voted for, so its
    log-likelihoods are -inf: only the argmax metrics are defined."""
    from compose.eval_data import LIKELIHOOD_METRICS

    details = card.details or {}
    if card.method != "composite" or details.get("aggregate") != "vote":
        return
    wanted = [m for m in metrics if m in LIKELIHOOD_METRICS] + (["--forgetting"] * forgetting)
    if wanted:
        raise InvalidArgument(
            f"{card.ref} is a voting ensemble: {wanted[0]} is undefined for it (tokens no"
            " member votes for have probability 0); use --metric exact_match, accuracy or"
            " accuracy_norm"
        )


def _resamples() -> int:
    from compose.eval_stats import DEFAULT_RESAMPLES

    return DEFAULT_RESAMPLES


def _base(
    registry: Registry, base: str | os.PathLike[str] | None, card: AdapterCard, scratch: Path
) -> tuple[Path, str]:
    given = base if base is not None else card.base_model
    if given is None:
        raise InvalidArgument(f"{card.ref} names no base model: give --base DIR")
    text = str(given)
    if Path(text).is_dir():
        folder = Path(text)
    elif base is None:
        raise InvalidArgument(
            f"{card.ref} was trained on {text!r}, which is not a folder here: give --base DIR"
            " (a local copy of the base model, or a registry reference)"
        )
    else:
        base_card = registry.show(text)
        registry.link_files(base_card, scratch)
        return scratch, base_card.ref
    if not (folder / "config.json").is_file():
        raise InvalidArgument(f"--base {folder}: no config.json (not a model folder)")
    # Recorded resolved, so that `hub eval --rerun` finds it from any working directory.
    return folder, str(folder.resolve())


def _base_identity(folder: Path) -> str:
    """What a cached base score is keyed by: the config and each weight file's name, size and
    modification time (hashing gigabytes of weights per eval would cost more than scoring)."""
    parts = [(folder / "config.json").read_bytes().decode("utf-8", "replace")]
    for path in sorted(folder.glob("*.safetensors")):
        stat = path.stat()
        parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("torch", "transformers", "peft", "hub-adapters"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    with contextlib.suppress(PackageNotFoundError):  # AdapterHub's runtime, where installed
        out["adapters"] = version("adapters")
    return out


def load_base_model(base_dir: Path, dtype: str, device: Any) -> Any:
    """The base model from ``base_dir`` in ``dtype`` on ``device``, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    # transformers' own per-load bars would interleave with ours, once per model loaded.
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch_dtype)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    return model.to(device).eval()


def _tokenizer(base_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(base_dir))
    except (OSError, ValueError) as err:
        raise InvalidArgument(
            f"--base {base_dir}: no tokenizer could be loaded from it ({err})"
        ) from None


def _scores(
    model: Any,
    tokenizer: Any,
    dataset: EvalData,
    metrics: Sequence[str],
    config: dict[str, Any],
    device: Any,
    label: str,
    progress: Callable[[str, int], Any] | None,
) -> dict[str, list[float]]:
    from compose.evaluate import score, sequences

    bar = progress(label, sequences(dataset, metrics)) if progress else None
    try:
        scored = score(
            model,
            tokenizer,
            dataset,
            metrics,
            batch_size=config["batch_size"],
            device=device,
            progress=bar.update if bar else None,
        )
    finally:
        if bar:
            bar.close()
    return scored.scores


def _evaluate_one(
    cache: BaseCache,
    card: AdapterCard,
    dataset: EvalData,
    metrics: Sequence[str],
    base_dir: Path,
    base_label: str,
    config: dict[str, Any],
    scratch: Path,
    progress: Callable[[str, int], Any] | None,
    annotate: Callable[[dict[str, Any], bytes], None] | None,
    *,
    general: EvalData | None = None,
    cost: CostOptions | None = None,
) -> Made:
    """Score one adapter (laid out in ``scratch``) and make its record; stores nothing."""
    from compose.composites import language_model, load_composed
    from compose.evaluate import device_for

    started = time.perf_counter()
    device = device_for(config["device"])
    tokenizer = _tokenizer(base_dir)
    if config.get("chat"):
        from compose.eval_chat import with_chat_template

        dataset = with_chat_template(dataset, tokenizer, base_label)
    # One load of the base serves both: scored as it is first (when not cached), then the
    # adapter is loaded onto it.
    base_model = load_base_model(base_dir, config["dtype"], device)
    base_scores = None
    if config["with_base"]:
        base_scores = _cached_base_scores(
            cache, base_model, base_dir, dataset, metrics, config, device, tokenizer, progress
        )
    try:
        model = language_model(load_composed(base_model, scratch))
    except (RuntimeError, ValueError, KeyError) as err:
        raise misfit(card, base_label, err) from None
    scores = _scores(model, tokenizer, dataset, metrics, config, device, card.repo, progress)
    extras: dict[str, Any] = {}
    if general is not None:
        from hub.eval_forgetting import measure_forgetting

        extras["forgetting"] = measure_forgetting(
            cache, model, base_dir, tokenizer, general, config, device, card.repo, progress
        )
    del model
    if cost is not None:
        from hub.eval_cost import measure_cost

        extras["cost"] = measure_cost(
            card, scratch, base_dir, tokenizer, dataset,
            dtype=config["dtype"], device=device, options=cost,
        )  # fmt: skip
    return _record(
        annotate,
        card,
        dataset,
        metrics,
        scores,
        base_scores,
        base_label,
        config,
        device,
        time.perf_counter() - started,
        extras,
    )


def _cached_base_scores(
    cache: BaseCache,
    base_model: Any,
    base_dir: Path,
    dataset: EvalData,
    metrics: Sequence[str],
    config: dict[str, Any],
    device: Any,
    tokenizer: Any,
    progress: Callable[[str, int], Any] | None,
) -> dict[str, list[float]]:
    key_fields = {
        "base": _base_identity(base_dir),
        "data": dataset.sha256,
        "rows": len(dataset.rows),
        "metrics": sorted(metrics),
        "chat": bool(config.get("chat")),
        "dtype": config["dtype"],
        "device": str(device.type),
        "versions": _versions(),
    }

    def compute() -> dict[str, list[float]]:
        return _scores(base_model, tokenizer, dataset, metrics, config, device, "base", progress)

    scores: dict[str, list[float]] = cache.get(key_fields, compute)
    return scores


def _summaries(
    metrics: Sequence[str], scores: dict[str, list[float]], seed: int
) -> dict[str, dict[str, Any]]:
    import math

    from compose.eval_data import HIGHER_IS_BETTER
    from compose.eval_stats import estimate

    out = {}
    for name in metrics:
        est = estimate(scores[name], seed=seed)
        value, lo, hi, err = est.value, est.ci95[0], est.ci95[1], est.stderr
        if name == "perplexity":  # exp of the cross-entropy: its interval maps through exp
            value, lo, hi, err = math.exp(value), math.exp(lo), math.exp(hi), math.exp(value) * err
        out[name] = {
            "value": value,
            "n": est.n,
            "stderr": err,
            "ci95": [lo, hi],
            "higher_is_better": HIGHER_IS_BETTER[name],
        }
    return out


def _deltas(
    metrics: Sequence[str],
    scores: dict[str, list[float]],
    base: dict[str, list[float]],
    seed: int,
) -> dict[str, dict[str, Any]]:
    import math

    from compose.eval_stats import paired_delta

    out = {}
    for name in metrics:
        d = paired_delta(scores[name], base[name], seed=seed)
        if name == "perplexity":  # a ratio: exp(mean paired cross-entropy difference)
            out[name] = {
                "ratio": math.exp(d.value),
                "ci95": [math.exp(d.ci95[0]), math.exp(d.ci95[1])],
                "p_value": d.p_value,
            }
        else:
            out[name] = {"value": d.value, "ci95": list(d.ci95), "p_value": d.p_value}
    return out


def _record(
    annotate: Callable[[dict[str, Any], bytes], None] | None,
    card: AdapterCard,
    dataset: EvalData,
    metrics: Sequence[str],
    scores: dict[str, list[float]],
    base_scores: dict[str, list[float]] | None,
    base_label: str,
    config: dict[str, Any],
    device: Any,
    seconds: float,
    extras: dict[str, Any] | None = None,
) -> Made:
    seed = config["seed"]
    extras = dict(extras or {})
    forgetting = extras.pop("forgetting", None)
    per_example = "".join(
        json.dumps(
            {
                "row": i,
                **{m: scores[m][i] for m in metrics},
                **({f"base_{m}": base_scores[m][i] for m in metrics} if base_scores else {}),
            },
            sort_keys=True,
        )
        + "\n"
        for i in range(len(dataset.rows))
    ).encode()
    record: dict[str, Any] = {
        "id": f"ev-{uuid.uuid4().hex[:12]}",
        "ref": card.ref,
        "commit": card.commit,
        "source": EVAL_SOURCE,
        "dataset": {
            "sha256": dataset.sha256,
            "rows": len(dataset.rows),
            "kind": dataset.kind,
            "name": dataset.path.name,
        },
        "metrics": _summaries(metrics, scores, seed),
        "base": (
            {"model": base_label, "metrics": _summaries(metrics, base_scores, seed)}
            if base_scores
            else None
        ),
        "delta": _deltas(metrics, scores, base_scores, seed) if base_scores else None,
        "forgetting": forgetting.summary if forgetting else None,
        "cost": extras.get("cost"),
        "config": config,
        "versions": _versions(),
        "device": device_label(device),
        "seconds": round(seconds, 3),
        "created_at": utcnow(),
    }
    if annotate is not None:
        annotate(record, per_example)
    return Made(card, record, dataset.path, per_example, forgetting)


def device_label(device: Any) -> str:
    """``cuda (NVIDIA H200)`` or ``cpu (x86_64, 16 cores)``: what an eval record says it ran on."""
    if getattr(device, "type", None) == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"


def prepare_imported(
    card: dict[str, Any], records: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Records imported at push (``hub.eval_import``), made ready to be stored on the version
    ``card`` in the push's own transaction (``Catalog.commit``): their ref, commit and time.
    Their metrics are on the card already."""
    for record in records:
        record.update(ref=f"{card['repo']}@{card['commit']}", commit=card["commit"])
        record.setdefault("created_at", utcnow())
    return list(records)


def records_for(registry: Registry, card: AdapterCard) -> list[dict[str, Any]]:
    """Every eval record of ``card``'s version, oldest first."""
    return registry.catalog.eval_records(card.repo, card.commit)


def add_metric(
    registry: Registry,
    ref: str,
    spec: str,
    *,
    ci: tuple[float, float] | None = None,
    n: int | None = None,
    higher_is_better: bool | None = None,
    lower_is_better: bool = False,
) -> dict[str, Any]:
    """Record ``NAME=VALUE[@DATASET]`` on an existing version (source ``manual``).

    Args:
        ci: the 95% interval (LO, HI) around the value.
        n: the number of examples behind the value.
        higher_is_better: the metric's direction; None: from its name, as for a metric typed
            at push (``schemas.metrics.default_higher_is_better``: losses, perplexity, error
            rates are lower-is-better), so both sort alike.
        lower_is_better: the same as ``higher_is_better=False`` (its older spelling).

    Raises:
        InvalidArgument: a malformed spec, an interval that does not hold the value, n <= 0,
            or ``lower_is_better`` with ``higher_is_better=True``.
    """
    import math

    from schemas.card import Metric

    if lower_is_better:
        if higher_is_better:
            raise InvalidArgument("higher_is_better=True contradicts lower_is_better=True")
        higher_is_better = False
    # Refuses non-finite values itself (schemas.card); its direction comes from the name.
    metric = Metric.parse(spec, what="metric")
    if higher_is_better is not None:
        metric.higher_is_better = higher_is_better
    if ci is not None:
        lo, hi = ci
        if not (math.isfinite(lo) and math.isfinite(hi)) or not lo <= metric.value <= hi:
            raise InvalidArgument(f"--ci {lo},{hi}: expected LO,HI around the value {metric.value}")
    if n is not None and n <= 0:
        raise InvalidArgument(f"--n must be a positive number of examples, got {n}")
    card = registry.show(ref)
    record = {
        "id": f"ev-{uuid.uuid4().hex[:12]}",
        "ref": card.ref,
        "commit": card.commit,
        "source": "manual",
        "dataset": {"name": metric.dataset},
        "metrics": {
            metric.name: {
                "value": metric.value,
                "n": n,
                "stderr": None,
                "ci95": list(ci) if ci else None,
                "higher_is_better": metric.higher_is_better,
            }
        },
        "base": None,
        "delta": None,
        "forgetting": None,
        "cost": None,
        "config": {},
        "versions": {},
        "created_at": utcnow(),
    }
    store_record(registry, card, record)
    return record
