"""A Trainer output folder's ``checkpoint-<step>/`` folders, pushed as versions in step order.

``transformers.Trainer`` with ``save_steps`` writes ``OUTPUT_DIR/checkpoint-<global_step>/``:
the adapter (``adapter_config.json``, ``adapter_model.safetensors``, ``README.md``, tokenizer
files) beside the state it needs to resume (optimizer, scheduler, RNG, ``training_args.bin``,
``trainer_state.json``; ``hub.inspect.files`` leaves those out). ``trainer_state.json`` holds
``global_step``, ``epoch``, ``log_history`` (one entry per logging / evaluation event, each
with its ``step``) and, with ``metric_for_best_model``, ``best_metric``, ``best_global_step``
and ``best_model_checkpoint``. A folder with one (a checkpoint, or an output_dir after
``trainer.save_state()``) gets one eval record with source ``trainer`` and
``"origin": {"file": "trainer_state.json", ...}``:

- ``metrics``: the values logged at the step the folder's weights are from (``loss``,
  ``eval_loss``, ``eval_<metric>``, ``train_loss``...), without the bookkeeping values
  (learning rate, gradient norm, runtimes, throughputs, FLOs); they join the card.
- ``trainer.step``: that step. A ``checkpoint-<N>/`` holds step N's weights (its
  ``global_step``). In another folder the weights are the last step's (``global_step``) unless
  the Trainer loaded the best checkpoint at the end (``load_best_model_at_end``, which is in
  ``training_args.bin``, a pickle that is never read): when the best step differs from the
  last, the step is the one whose ``checkpoint-<step>/`` in the folder holds the same adapter
  file, byte for byte, and None when no checkpoint there does; then no logged value is put on
  the card (it could be another step's), and ``trainer.notes`` says why.
- ``trainer.best``: ``{"name", "value", "step", "checkpoint", "these_weights"}``. The file
  does not name ``metric_for_best_model``: the name is the key of the entry logged at
  ``best_global_step`` whose value equals ``best_metric`` (an ``eval_*`` key first); when no
  key or several do, it is ``best_metric`` and a note says so. It joins the card only as the
  value logged at the weights' step, when that is the best step.
- ``trainer.log_history``: every evaluation entry (those with an ``eval_*`` value: step,
  epoch and the values), the run's curve. Training-loss entries (one per logging step) are
  left out but for the weights' step.

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
    from hub.eval_import import Imported
    from hub.registry import PushResult, Registry
    from schemas.card import Metric

TRAINER_STATE = "trainer_state.json"
WEIGHTS = "adapter_model.safetensors"

# log_history values that describe the run, not the adapter's quality.
_BOOKKEEPING = frozenset(
    {"step", "epoch", "learning_rate", "grad_norm", "total_flos", "num_input_tokens_seen"}
)
_BOOKKEEPING_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second", "_flos")


@dataclass
class Checkpoint:
    """One ``checkpoint-<step>/`` (or output_dir) folder and what its ``trainer_state.json``
    says."""

    path: Path
    step: int
    """``global_step``: the last step trained (from the folder's name without the file)."""
    epoch: float | None = None
    metrics: list[Metric] = field(default_factory=list)
    """Logged at ``weights_step``; none when it is unknown."""
    weights_step: int | None = None
    """The step the folder's weights are from (see the module's docstring); None: unknown."""
    best: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    state_sha256: str | None = None
    """Of ``trainer_state.json``; None without one."""

    def details(self) -> dict[str, Any]:
        """The card's ``details.trainer``."""
        out: dict[str, Any] = {"global_step": self.step, "checkpoint": self.path.name}
        if self.epoch is not None:
            out["epoch"] = self.epoch
        if self.weights_step != self.step:
            out["weights_step"] = self.weights_step
        return out

    def facts(self) -> dict[str, Any]:
        """What a push to a team hub sends for this folder (``schemas.api.TrainerFacts``):
        the server sees neither ``trainer_state.json`` nor the checkpoint folders."""
        return {
            "folder": self.path.name,
            "step": self.step,
            "epoch": self.epoch,
            "metrics": [{"name": m.name, "value": m.value} for m in self.metrics],
            "weights_step": self.weights_step,
            "best": self.best,
            "history": self.history,
            "notes": self.notes,
            "state_sha256": self.state_sha256,
        }

    @classmethod
    def from_facts(cls, facts: dict[str, Any]) -> Checkpoint:
        """The inverse of ``facts`` (validated by ``schemas.api.TrainerFacts`` first)."""
        from schemas.card import Metric

        return cls(
            Path(facts["folder"]),
            facts["step"],
            facts.get("epoch"),
            [Metric(name=m["name"], value=m["value"], source="trainer")
             for m in facts.get("metrics") or []],
            weights_step=facts.get("weights_step"),
            best=facts.get("best"),
            history=list(facts.get("history") or []),
            notes=list(facts.get("notes") or []),
            state_sha256=facts["state_sha256"],
        )  # fmt: skip

    def imported(self) -> Imported | None:
        """The eval record of ``trainer_state.json`` (``hub.eval_import``), with ``metrics``
        as its card metrics; None without the file or anything in it to record."""
        from hub.eval_import import Imported, summary

        if self.state_sha256 is None or not (self.metrics or self.best or self.history):
            return None
        trainer = {
            "global_step": self.step,
            "step": self.weights_step,
            "best": self.best,
            "log_history": self.history,
            "notes": self.notes,
        }
        record = {
            "source": "trainer",
            "dataset": {"name": None},
            "metrics": {
                m.name: summary(m.name, m.value, m.n, m.higher_is_better) for m in self.metrics
            },
            "origin": {"file": TRAINER_STATE, "sha256": self.state_sha256},
            "trainer": trainer,
            "base": None,
            "delta": None,
            "cost": None,
            "config": {},
            "versions": {},
        }
        return Imported(record, self.metrics)


def read_trainer_state(path: Path) -> Checkpoint | None:
    """What the ``trainer_state.json`` in ``path`` says (None without one): the step, epoch and
    metrics that ``Registry.push`` records on a checkpoint folder's version."""
    if not (path / TRAINER_STATE).is_file():
        return None
    match = CHECKPOINT_DIR.fullmatch(path.name)
    return read_checkpoint(path, int(match["step"]) if match else None)


def read_checkpoint(path: Path, step: int | None) -> Checkpoint:
    """The step, epoch, logged metrics, best metric and evaluation history of the checkpoint
    (or output_dir) folder ``path``.

    ``step`` (from the folder name) is used when there is no ``trainer_state.json``; when there
    is one, its ``global_step`` wins.

    Raises:
        InvalidAdapter: ``trainer_state.json`` is not valid JSON, or ``global_step`` /
            ``log_history`` / ``best_global_step`` have the wrong type (the message names the
            file and field).
    """
    from schemas.card import Metric

    state_file = path / TRAINER_STATE
    if not state_file.is_file() and step is not None:
        return Checkpoint(path, step, weights_step=step)
    try:
        data = state_file.read_bytes()
        state = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidAdapter(
            f"{state_file} is not valid JSON ({error})", path=str(state_file)
        ) from None
    if not isinstance(state, dict):
        raise InvalidAdapter(f"{state_file} must hold a JSON object", path=str(state_file))
    global_step = state.get("global_step", step)  # None: neither the file nor the name says
    if isinstance(global_step, bool) or not isinstance(global_step, int):
        raise _bad_field(state_file, "global_step", "an integer", global_step)
    history = state.get("log_history", [])
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
        raise InvalidAdapter(
            f"{state_file}: field 'log_history' must be a list of objects",
            path=str(state_file),
            field="log_history",
        )
    best_step = state.get("best_global_step")
    if best_step is not None and (isinstance(best_step, bool) or not isinstance(best_step, int)):
        raise _bad_field(state_file, "best_global_step", "an integer or null", best_step)
    best_checkpoint = state.get("best_model_checkpoint")
    best_name = Path(best_checkpoint).name if isinstance(best_checkpoint, str) else None
    named = CHECKPOINT_DIR.fullmatch(best_name or "")
    if best_step is None and named:  # files written before best_global_step existed
        best_step = int(named["step"])
    notes: list[str] = []
    weights_step = _weights_step(path, global_step, best_step, notes)
    values = _logged(history, weights_step) if weights_step is not None else {}
    best = _best(state.get("best_metric"), best_step, best_name, history, notes)
    if best is not None:
        best["these_weights"] = None if weights_step is None else best["step"] == weights_step
        if best["these_weights"] is False:
            notes.append(
                f"the best {best['name']} ({best['value']:g}) was reached at step"
                f" {best['step']}{_at(best['checkpoint'])}, not by these weights (step"
                f" {weights_step})"
            )
    epoch = state.get("epoch")
    return Checkpoint(
        path,
        global_step,
        float(epoch) if _is_number(epoch) else None,  # type: ignore[arg-type]
        [Metric(name=n, value=v, source="trainer") for n, v in sorted(values.items())],
        weights_step=weights_step,
        best=best,
        history=_evaluations(history),
        notes=notes,
        state_sha256=hashlib.sha256(data).hexdigest(),
    )


def _weights_step(
    path: Path, global_step: int, best_step: int | None, notes: list[str]
) -> int | None:
    """The step ``path``'s weights are from (the module's docstring says how)."""
    if CHECKPOINT_DIR.fullmatch(path.name) or best_step is None or best_step == global_step:
        return global_step
    mine = _weights_digest(path)
    for candidate in (best_step, global_step):
        theirs = _weights_digest(path / f"checkpoint-{candidate}")
        if mine is not None and theirs == mine:
            if candidate != global_step:
                notes.append(
                    f"these weights are step {candidate}'s, the best checkpoint's (the same"
                    f" {WEIGHTS} as checkpoint-{candidate}/): the Trainer loaded it at the end;"
                    f" training ran to step {global_step}"
                )
            return candidate
    notes.append(
        f"these weights are step {global_step}'s, or step {best_step}'s if the Trainer loaded"
        " the best checkpoint at the end (load_best_model_at_end, in training_args.bin, which"
        f" is not read); no checkpoint-{best_step}/ or checkpoint-{global_step}/ here holds the"
        f" same {WEIGHTS}, so no logged value is put on the card"
    )
    return None


def _weights_digest(folder: Path) -> str | None:
    return _sha256(folder / WEIGHTS) if (folder / WEIGHTS).is_file() else None


def _logged(history: list[dict[str, Any]], step: int) -> dict[str, float]:
    values: dict[str, float] = {}
    for entry in history:
        if entry.get("step") != step:
            continue
        for name, value in entry.items():
            if _is_metric(name, value):
                values[name] = float(value)  # a later event at the same step wins
    return values


def _evaluations(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluation entries of ``log_history``, without their bookkeeping values."""
    out = []
    for entry in history:
        values = {k: float(v) for k, v in entry.items() if _is_metric(k, v)}
        if any(name.startswith("eval_") for name in values):
            head = {k: entry[k] for k in ("step", "epoch") if _is_number(entry.get(k))}
            out.append({**head, **values})
    return out


def _best(
    value: Any,
    step: int | None,
    checkpoint: str | None,
    history: list[dict[str, Any]],
    notes: list[str],
) -> dict[str, Any] | None:
    """``best_metric`` with the name it was logged under at ``step`` (``best_metric`` when
    that cannot be told), or None when the file has no finite best metric."""
    if not _is_number(value):
        return None
    value = float(value)
    names = sorted(
        {
            name
            for entry in history
            if step is not None and entry.get("step") == step
            for name, logged in entry.items()
            if _is_metric(name, logged) and float(logged) == value
        }
    )
    evals = [n for n in names if n.startswith("eval_")]
    chosen = evals if len(evals) == 1 else names
    name = chosen[0] if len(chosen) == 1 else "best_metric"
    if step is None:
        notes.append(
            f"best_metric {value:g} is not named: trainer_state.json gives neither"
            " best_global_step nor best_model_checkpoint, so its step is unknown"
        )
    elif not names:
        notes.append(
            f"best_metric {value:g} is not named: no value logged at step {step} equals it"
            " (the file does not say metric_for_best_model)"
        )
    elif name == "best_metric":
        notes.append(
            f"best_metric {value:g} is not named: {', '.join(names)} all logged it at step"
            f" {step} (the file does not say metric_for_best_model)"
        )
    return {"name": name, "value": value, "step": step, "checkpoint": checkpoint}


def _at(checkpoint: str | None) -> str:
    return f" ({checkpoint})" if checkpoint else ""


def _bad_field(state_file: Path, name: str, what: str, got: Any) -> InvalidAdapter:
    return InvalidAdapter(
        f"{state_file}: field {name!r} must be {what}, got {got!r}",
        path=str(state_file),
        field=name,
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
