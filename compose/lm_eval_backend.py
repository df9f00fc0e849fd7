"""lm-evaluation-harness as an optional scoring backend: a local task YAML, its own evaluator.

``find_task`` resolves a task name in an include folder (only that folder: lm-eval's bundled
tasks are not indexed) and refuses any task whose data is not a local file, before a model is
loaded. ``run_task`` runs lm-eval's ``simple_evaluate`` on a model object the caller built (the
exact adapter version the registry materialized, on the device and dtype of a native eval) and
returns each metric's value with its per-example scores, plus lm-eval's per-sample log.

Why a model object and not ``HFLM(pretrained=..., peft=...)``: lm-eval's ``peft=`` path resizes
the embeddings to ``len(tokenizer)`` when that differs from the config's ``vocab_size`` (Qwen,
for one, pads its vocabulary), which changes every log-softmax. Handing it the model hub's
native runner scores keeps the two backends on the same weights, so their log-likelihoods agree.

Everything runs offline: ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` are set for the run and the
datasets cache is a scratch folder, so nothing is downloaded and nothing is left behind.

lm-eval is an extra (``pip install 'hub-adapters[eval]'``); without it every entry point raises
one ``InvalidArgument`` saying how to install it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import InvalidArgument, InvalidData

LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")
"""datasets' packaged builders that read ``data_files`` from disk: the only ``dataset_path``s
a task may name (anything else is a Hub dataset id or a loading script)."""

METRIC_NAMES = {"acc": "accuracy"}
"""lm-eval metrics whose definition is a native one, under the native name. ``acc`` of a
``multiple_choice`` task is the argmax over choices of the summed log-likelihood, ties to the
first: hub's ``accuracy``. Others keep lm-eval's name (``acc_norm`` divides by the choice's
length in bytes, not tokens, so it is not ``accuracy_norm``)."""

INSTALL_HINT = "pip install 'hub-adapters[eval]' (or lm-eval)"


def lm_eval_version() -> str:
    """The installed lm-eval's version; ``InvalidArgument`` with the install line if none."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise InvalidArgument(f"--lm-eval needs lm-evaluation-harness: {INSTALL_HINT}") from None
    try:
        return version("lm_eval")
    except PackageNotFoundError:  # an import path without package metadata (a source tree)
        return "unknown"


@dataclass(frozen=True)
class DataFile:
    """One local file a task reads, with the split it feeds."""

    split: str
    path: Path
    sha256: str


@dataclass
class LmEvalTask:
    """A resolved local task: its YAML, output type, the files it reads, lm-eval's manager."""

    name: str
    yaml_path: Path
    yaml_sha256: str
    output_type: str
    split: str
    """The split lm-eval evaluates (``test_split``, else ``validation_split``)."""
    files: tuple[DataFile, ...]
    manager: Any = field(repr=False)

    @property
    def data_file(self) -> DataFile:
        """The file of the evaluated split (the record's dataset)."""
        return next(f for f in self.files if f.split == self.split)


@dataclass
class MetricResult:
    """One metric of one run: lm-eval's value, and per-example scores when it is a mean."""

    value: float
    higher_is_better: bool
    per_example: list[float]
    """One score per evaluated document, in document order: what lm-eval averaged for a
    ``mean`` metric; for a corpus-level one (perplexity, bleu...), each document's contribution."""
    is_mean: bool
    lm_eval_stderr: float | None


@dataclass
class LmEvalRun:
    """What ``run_task`` returns: metrics under hub's names, lm-eval's per-sample log."""

    metrics: dict[str, MetricResult]
    samples: list[dict[str, Any]]
    """lm-eval's per-sample log (JSON-ready), one entry per document, in document order."""
    doc_ids: list[int]
    config: dict[str, Any]
    """The task config lm-eval ran (after its defaults), its version and n-shot."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _data_files(name: str, yaml_path: Path, cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """``(split, path)`` for every file the task's ``dataset_kwargs.data_files`` names."""
    where = f"--lm-eval {name} ({yaml_path})"
    if cfg.get("custom_dataset") is not None:
        raise InvalidArgument(
            f"{where}: custom_dataset is not supported; use dataset_path: json with"
            " dataset_kwargs.data_files (a local file whose digest the record keeps)"
        )
    dataset_path = cfg.get("dataset_path")
    if dataset_path not in LOCAL_BUILDERS:
        raise InvalidArgument(
            f"{where}: dataset_path {dataset_path!r} is not local data; only local files are"
            f" evaluated: dataset_path: one of {', '.join(LOCAL_BUILDERS)}, with"
            " dataset_kwargs.data_files naming the file"
        )
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if not files:
        raise InvalidArgument(f"{where}: dataset_kwargs.data_files is missing (name a local file)")
    by_split = files if isinstance(files, dict) else {"train": files}
    out = []
    for split, value in by_split.items():
        for item in [value] if isinstance(value, str) else list(value):
            if not isinstance(item, str):
                raise InvalidArgument(f"{where}: data_files entries must be file paths")
            out.append((str(split), item))
    return out


def _resolve_files(name: str, yaml_path: Path, cfg: dict[str, Any]) -> tuple[DataFile, ...]:
    where = f"--lm-eval {name} ({yaml_path})"
    resolved = []
    for split, item in _data_files(name, yaml_path, cfg):
        if "://" in item:
            raise InvalidArgument(
                f"{where}: data file {item!r} is not local; only local files are evaluated"
            )
        # datasets resolves relative data_files against the working directory, so we do too.
        path = Path(item)
        if not path.is_file():
            raise InvalidData(
                f"{where}: data file {item} not found (relative paths are resolved against the"
                f" current directory {Path.cwd()}; an absolute path avoids that)",
                path=item,
            )
        resolved.append(DataFile(split=split, path=path.resolve(), sha256=_sha256(path)))
    return tuple(resolved)


@contextlib.contextmanager
def _offline(scratch: Path) -> Iterator[None]:
    """No network and a private datasets cache for the duration of a run. The variables cover
    a first import of datasets / huggingface_hub; the config attributes cover an earlier one."""
    names = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved_env = {n: os.environ.get(n) for n in names}
    os.environ.update({n: "1" for n in names})
    import datasets.config as dconfig

    saved = {k: getattr(dconfig, k) for k in ("HF_DATASETS_CACHE", "HF_HUB_OFFLINE")}
    dconfig.HF_DATASETS_CACHE = scratch / "datasets"
    dconfig.HF_HUB_OFFLINE = True
    quiet = logging.getLogger("lm_eval")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its per-task warnings would drown the CLI's one-line errors
    try:
        yield
    finally:
        quiet.setLevel(level)
        for key, value in saved.items():
            setattr(dconfig, key, value)
        for n, v in saved_env.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def find_task(name: str, include_path: str | os.PathLike[str]) -> LmEvalTask:
    """Resolve ``name`` among the task YAMLs under ``include_path`` and check its data is local.

    Args:
        name: the task's ``task:`` name.
        include_path: a folder of lm-eval task YAMLs (searched recursively); lm-eval's bundled
            tasks are not searched, so a name always means a file the user has.

    Returns:
        The task, with the digest of its YAML and of each data file.

    Raises:
        InvalidArgument: lm-eval missing, no such folder or task, a group or tag, data that is
            not a local file. InvalidData: a data file that does not exist.

    Example:
        >>> task = find_task("sql_choice", "tasks/")                        # doctest: +SKIP
        >>> task.output_type, task.data_file.path.name
        ('multiple_choice', 'sql.jsonl')
    """
    lm_eval_version()
    folder = Path(include_path)
    if not folder.is_dir():
        raise InvalidArgument(f"--include-path {folder}: not a folder of lm-eval task YAMLs")
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import Kind

    manager = TaskManager(include_path=str(folder), include_defaults=False)
    entry = manager.task_index.get(name)
    if entry is None:
        known = ", ".join(manager.all_subtasks[:10]) or "none"
        raise InvalidArgument(
            f"--lm-eval {name}: no such task in --include-path {folder} (tasks there: {known})"
        )
    if entry.kind is not Kind.TASK or entry.yaml_path is None or entry.cfg is None:
        raise InvalidArgument(
            f"--lm-eval {name}: a {entry.kind.name.lower()}, not a task; name one task"
        )
    cfg = entry.cfg
    yaml_path = Path(entry.yaml_path)
    output_type = str(cfg.get("output_type", "generate_until"))
    split = cfg.get("test_split") or cfg.get("validation_split")
    files = _resolve_files(name, yaml_path, cfg)
    if not split or split not in {f.split for f in files}:
        raise InvalidArgument(
            f"--lm-eval {name} ({yaml_path}): the evaluated split {split!r} (test_split, else"
            f" validation_split) has no data file; data_files has {[f.split for f in files]}"
        )
    return LmEvalTask(
        name=name,
        yaml_path=yaml_path,
        yaml_sha256=_sha256(yaml_path),
        output_type=output_type,
        split=str(split),
        files=files,
        manager=manager,
    )


def _json_ready(value: Any) -> Any:
    """lm-eval's samples hold numpy scalars and tuples: make them plain JSON values."""
    import json

    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(value, default=handle_non_serializable))


def run_task(
    task: LmEvalTask,
    model: Any,
    tokenizer: Any,
    *,
    batch_size: int = 8,
    limit: int | None = None,
    seed: int = 0,
    resamples: int = 2000,
) -> LmEvalRun:
    """Run lm-eval's evaluator on ``model`` for ``task``, offline.

    Args:
        model: a loaded causal LM (a ``PeftModel`` with the adapter, or the base), on its device.
        tokenizer: the base's tokenizer.
        limit: lm-eval's ``limit`` (the first N documents).
        seed: every lm-eval seed (python, numpy, torch, few-shot sampler).
        resamples: lm-eval's ``bootstrap_iters`` for its own stderr of corpus-level metrics.

    Returns:
        ``LmEvalRun``: metrics under hub's names (``METRIC_NAMES``; a filter other than
        ``none`` is appended as ``name:filter``), the per-sample log, the config lm-eval ran.

    Raises:
        InvalidData: lm-eval or datasets could not read the task's data.
    """
    import lm_eval
    from lm_eval.api.metrics import mean
    from lm_eval.models.huggingface import HFLM

    with tempfile.TemporaryDirectory(prefix="hub-lm-eval-") as tmp, _offline(Path(tmp)):
        try:
            loaded = task.manager.load([task.name])["tasks"]
        except Exception as err:  # datasets' errors have no common base; name the file
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise InvalidData(
                f"--lm-eval {task.name}: lm-eval could not read {task.data_file.path}: {first}",
                path=str(task.data_file.path),
            ) from None
        task_obj = loaded[task.name]
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=[task_obj],
            task_manager=task.manager,
            limit=limit,
            log_samples=True,
            bootstrap_iters=resamples,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    if out is None:  # only on a non-zero rank of a distributed run, which this never starts
        raise RuntimeError("lm-eval returned no results")
    aggregations = task_obj.aggregation()
    higher = out["higher_is_better"].get(task.name, {})
    results = out["results"][task.name]
    samples = sorted(out["samples"][task.name], key=lambda s: (s["filter"], s["doc_id"]))
    metrics: dict[str, MetricResult] = {}
    for key, value in results.items():
        metric, sep, filt = key.partition(",")
        if not sep or metric.endswith("_stderr") or not isinstance(value, int | float):
            continue
        name = METRIC_NAMES.get(metric, metric) + ("" if filt == "none" else f":{filt}")
        mine = [s for s in samples if s["filter"] == filt]
        stderr = results.get(f"{metric}_stderr,{filt}")
        metrics[name] = MetricResult(
            value=float(value),
            higher_is_better=bool(higher.get(metric, True)),
            per_example=_per_example_scores([s[metric] for s in mine]),
            is_mean=aggregations.get(metric) is mean,
            lm_eval_stderr=float(stderr) if isinstance(stderr, int | float) else None,
        )
    first_filter = samples[0]["filter"] if samples else "none"
    logged = [s for s in samples if s["filter"] == first_filter]
    return LmEvalRun(
        metrics=metrics,
        samples=[_json_ready(s) for s in logged],
        doc_ids=[int(s["doc_id"]) for s in logged],
        config={
            "task": _json_ready(out["configs"][task.name]),
            "n_shot": out["n-shot"].get(task.name),
            "lm_eval_version": out.get("lm_eval_version") or lm_eval_version(),
        },
    )


def _per_example_scores(values: list[Any]) -> list[float]:
    """The samples' entries for one metric as numbers: a number, or (perplexity and the other
    corpus-level log-likelihood metrics) a tuple whose first element is the document's
    contribution. Empty when they are not numbers (bleu's (reference, prediction) pairs)."""
    out = []
    for value in values:
        if isinstance(value, list | tuple) and value:
            value = value[0]
        if not isinstance(value, int | float):  # bools (is_greedy) count as 0/1
            return []
        out.append(float(value))
    return out
