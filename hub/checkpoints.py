"""A Trainer output folder's ``checkpoint-<step>/`` folders, pushed as versions in step order.

``transformers.Trainer`` with ``save_steps`` writes ``OUTPUT_DIR/checkpoint-<global_step>/``:
the adapter (``adapter_config.json``, ``adapter_model.safetensors``, ``README.md``, tokenizer
files) beside the state it needs to resume (optimizer, scheduler, RNG, ``training_args.bin``,
``trainer_state.json``; ``hub.inspect.files`` leaves those out). ``trainer_state.json`` holds
``global_step``, ``epoch`` and ``log_history``: one entry per logging / evaluation event, each
with its ``step``. The entries at a checkpoint's step become that version's metrics
(``source="trainer"``): ``loss``, ``eval_loss``, ``eval_<metric>``, ``train_loss``...,
without the bookkeeping values (learning rate, gradient norm, runtimes, throughputs, FLOs).

Example:
    >>> from hub import Registry
    >>> Registry().push_checkpoints("out/run-1", name="team/sql-lora")   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.inspect.files import CHECKPOINT_DIR, checkpoint_folders
from schemas.errors import AdapterNotFound, InvalidAdapter, InvalidArgument

if TYPE_CHECKING:
    from hub.registry import PushResult, Registry
    from schemas.card import Metric

TRAINER_STATE = "trainer_state.json"

# log_history values that describe the run, not the adapter's quality.
_BOOKKEEPING = frozenset(
    {"step", "epoch", "learning_rate", "grad_norm", "total_flos", "num_input_tokens_seen"}
)
_BOOKKEEPING_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second", "_flos")


@dataclass
class Checkpoint:
    """One ``checkpoint-<step>/`` folder and what its ``trainer_state.json`` says."""

    path: Path
    step: int
    epoch: float | None = None
    metrics: list[Metric] = field(default_factory=list)

    def details(self) -> dict[str, Any]:
        """The card's ``details.trainer``."""
        out: dict[str, Any] = {"global_step": self.step, "checkpoint": self.path.name}
        if self.epoch is not None:
            out["epoch"] = self.epoch
        return out


def read_trainer_state(path: Path) -> Checkpoint | None:
    """What the ``trainer_state.json`` in ``path`` says (None without one): the step, epoch and
    metrics that ``Registry.push`` records on a checkpoint folder's version."""
    if not (path / TRAINER_STATE).is_file():
        return None
    match = CHECKPOINT_DIR.fullmatch(path.name)
    return read_checkpoint(path, int(match["step"]) if match else None)


def read_checkpoint(path: Path, step: int | None) -> Checkpoint:
    """The step, epoch and logged metrics of the checkpoint folder ``path``.

    ``step`` (from the folder name) is used when there is no ``trainer_state.json``; when there
    is one, its ``global_step`` wins.

    Raises:
        InvalidAdapter: ``trainer_state.json`` is not valid JSON, or ``global_step`` /
            ``log_history`` have the wrong type (the message names the file and field).
    """
    from schemas.card import Metric

    state_file = path / TRAINER_STATE
    if not state_file.is_file() and step is not None:
        return Checkpoint(path, step)
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidAdapter(
            f"{state_file} is not valid JSON ({error})", path=str(state_file)
        ) from None
    if not isinstance(state, dict):
        raise InvalidAdapter(f"{state_file} must hold a JSON object", path=str(state_file))
    global_step = state.get("global_step", step)  # None: neither the file nor the name says
    if isinstance(global_step, bool) or not isinstance(global_step, int):
        raise InvalidAdapter(
            f"{state_file}: field 'global_step' must be an integer, got {global_step!r}",
            path=str(state_file),
            field="global_step",
        )
    history = state.get("log_history", [])
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
        raise InvalidAdapter(
            f"{state_file}: field 'log_history' must be a list of objects",
            path=str(state_file),
            field="log_history",
        )
    values: dict[str, float] = {}
    for entry in history:
        if entry.get("step") != global_step:
            continue
        for name, value in entry.items():
            if _is_metric(name, value):
                values[name] = float(value)  # a later event at the same step wins
    epoch = state.get("epoch")
    return Checkpoint(
        path,
        global_step,
        float(epoch) if _is_number(epoch) else None,  # type: ignore[arg-type]
        [Metric(name=n, value=v, source="trainer") for n, v in sorted(values.items())],
    )


def push_checkpoints(
    registry: Registry,
    folder: Path,
    *,
    name: str | None = None,
    tasks: Iterable[str] = (),
    tags: dict[str, str] | Sequence[str] | None = None,
    metrics: Iterable[Metric | str] = (),
    parent: str | None = None,
    description: str | None = None,
    allow_nonfinite: bool = False,
) -> list[PushResult]:
    """Push every ``checkpoint-<step>/`` in ``folder`` as a version of ``name``, in step order.

    Every checkpoint is inspected before the first is stored, so a bad one leaves the registry
    as it was. Each version gets the tag ``step=<global_step>``, ``details.trainer``
    (``global_step``, ``epoch``, ``checkpoint``) and the metrics logged at its step. A checkpoint
    whose files already are a version of ``name`` is not pushed again (its result has
    ``created=False``), so pushing a folder again after more training adds only the new ones.
    The adapter ``trainer.save_model`` wrote into ``folder`` itself is not one of them: push it
    with ``Registry.push(folder)``.

    Args:
        folder: the Trainer's ``output_dir``.
        name: ``namespace/name``; defaults to ``<user>/<folder name>``.
        tasks, tags, parent, description, allow_nonfinite: as for ``Registry.push``, for
            every version.
        metrics: refused: each checkpoint's own metrics come from its ``trainer_state.json``.

    Returns:
        One ``PushResult`` per checkpoint, in step order.

    Raises:
        InvalidAdapter: ``folder`` has no ``checkpoint-<step>/`` folder, or one of them is not
            a valid adapter (the message names it).
        InvalidArgument: ``metrics`` given.
    """
    from hub.folders import adapter_files
    from hub.inspect import inspect_adapter
    from hub.registry import PushResult
    from schemas.card import parse_tags
    from schemas.refs import validate_repo_id

    folder = Path(folder)
    if list(metrics):
        raise InvalidArgument(
            "--metric cannot be combined with --checkpoints: each checkpoint's metrics come"
            f" from its {TRAINER_STATE}; push one checkpoint folder to give it --metric"
        )
    found = checkpoint_folders(folder)
    if not found:
        raise InvalidAdapter(
            f"{folder}: no checkpoint-<step> folders (a Trainer writes them with save_steps);"
            f" push an adapter folder with `hub push {folder}`",
            path=str(folder),
        )
    repo = validate_repo_id(name) if name else registry._default_name(folder)
    user_tags = dict(tags) if isinstance(tags, dict) else parse_tags(list(tags or []))
    checkpoints = [read_checkpoint(path, step) for step, path in found]
    checkpoints.sort(key=lambda c: c.step)
    for checkpoint in checkpoints:  # all or nothing: check every one before storing any
        try:
            inspect_adapter(checkpoint.path, allow_nonfinite=allow_nonfinite)
        except InvalidAdapter as error:
            if str(checkpoint.path) in str(error):
                raise
            raise type(error)(f"{checkpoint.path}: {error}", **error.context) from None

    existing = _existing_versions(registry, repo)
    results = []
    for checkpoint in checkpoints:
        files = frozenset((rel, _sha256(p)) for rel, p in adapter_files(checkpoint.path))
        if files in existing:
            results.append(PushResult(existing[files], created=False))
            continue
        result = registry.push(  # which reads the step and metrics itself (read_trainer_state)
            checkpoint.path,
            name=repo,
            tasks=tasks,
            tags={"step": str(checkpoint.step), **user_tags},
            parent=parent,
            description=description,
            allow_nonfinite=allow_nonfinite,
        )
        existing[files] = result.card
        results.append(result)
    return results


def _existing_versions(registry: Registry, repo: str) -> dict[frozenset[tuple[str, str]], Any]:
    try:
        cards = registry.versions(repo)
    except AdapterNotFound:
        return {}
    return {frozenset((f.path, f.sha256) for f in card.files): card for card in cards}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _is_metric(name: str, value: Any) -> bool:
    return (
        _is_number(value) and name not in _BOOKKEEPING and not name.endswith(_BOOKKEEPING_SUFFIXES)
    )
