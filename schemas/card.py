"""The adapter card: everything the hub knows about one adapter version.

Cards are extracted at push time from the adapter files (``hub.inspect``), never typed by
hand; users add only ``tasks``, ``tags``, ``metrics`` and a description. The JSON form of a
card is what ``hub ls --json`` / ``hub show --json`` print and what the server returns.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, model_validator

from schemas.errors import InvalidArgument
from schemas.methods import PROMPT_METHODS

__all__ = ["PROMPT_METHODS"]

Method = str
"""Lowercase PEFT type (a method of ``schemas.methods.METHODS``) or ``composite``. DoRA is
``lora`` with ``variant="dora"``; stacks and ensembles are composites. AdapterHub adapters
(``library="adapters"``) add ``bottleneck`` (variant ``houlsby``, ``pfeiffer``, ``parallel``,
``compacter``...) and ``union`` (variant ``mam``, ``unipelt``)."""


class FileEntry(BaseModel):
    """One file of an adapter version, stored once by its sha256."""

    model_config = ConfigDict(frozen=True)

    path: str
    sha256: str
    size: int


class Metric(BaseModel):
    """An evaluation result: typed at push (``--metric exact_match=0.71@spider``), added later
    (``hub metric add``) or measured (``hub eval``, with its interval and the eval's id)."""

    name: str
    value: FiniteFloat
    """Finite: JSON has no Inf or NaN, and a readers' search or card must never fail on one."""
    dataset: str | None = None
    source: str = "push"
    """Where the value comes from: ``push``, ``manual``, ``hub-eval``, ``trainer`` (logged by a
    Trainer: its ``trainer_state.json`` at the checkpoint's step, ``all_results.json``,
    ``eval_results.json``), ``model-index`` (the README's front matter)."""
    n: int | None = None
    stderr: float | None = None
    ci95: list[float] | None = None
    higher_is_better: bool | None = None
    """Filled from the name when not given (``schemas.metrics.default_higher_is_better``)."""
    eval_id: str | None = None

    @model_validator(mode="after")
    def _says_direction(self) -> Metric:
        if self.higher_is_better is None:
            from schemas.metrics import default_higher_is_better

            self.higher_is_better = default_higher_is_better(self.name)
        return self

    @classmethod
    def parse(cls, text: str) -> Metric:
        """Parse ``NAME=VALUE[@DATASET]``.

        Example:
            >>> Metric.parse("exact_match=0.71@spider")
            Metric(name='exact_match', value=0.71, dataset='spider')
        """
        name, sep, rest = text.partition("=")
        value_text, at, dataset = rest.partition("@")
        try:
            value = float(value_text)
        except ValueError:
            value = float("nan")
        if not sep or not name.strip() or value != value or (at and not dataset):
            raise InvalidArgument(
                f"invalid --metric {text!r}: expected NAME=VALUE[@DATASET], e.g. accuracy=0.71@mmlu"
            )
        if not math.isfinite(value):
            raise InvalidArgument(
                f"invalid --metric {text!r}: the value must be a finite number"
                " (inf and values beyond 1.8e308 are not)"
            )
        return cls(name=name.strip(), value=value, dataset=dataset or None)


def parse_tags(specs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["team=nlp", "stage=prod"]`` -> ``{"team": "nlp", "stage": "prod"}``."""
    tags: dict[str, str] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(f"invalid --tag {spec!r}: expected KEY=VALUE, e.g. team=nlp")
        tags[key.strip()] = value.strip()
    return tags


class InferenceOverhead(BaseModel):
    """What the adapter costs at inference time beyond the base model."""

    none_when_merged: bool
    """True when merging the adapter into the base weights removes all overhead."""
    extra_tokens: int = 0
    """Virtual tokens prepended to every sequence (prompt methods)."""
    extra_layers: int = 0
    """Number of modules that run extra computation when the adapter is not merged."""


class Lineage(BaseModel):
    """Where an adapter came from: its training parent, or the recipe that built it."""

    parent: str | None = None
    """``ns/name@commit`` of the adapter this one was trained on top of (stacked training)."""
    recipe: dict[str, Any] | None = None
    """For composites: the operator and its parameters."""
    inputs: list[str] = Field(default_factory=list)
    """For composites: the exact input references, ``ns/name@<40-hex commit>``."""


class InspectedAdapter(BaseModel):
    """What ``hub.inspect`` reads from an adapter folder, before it gets a repo and version."""

    library: str = "peft"
    """The library whose format the adapter is saved in: ``peft`` (``save_pretrained``) or
    ``adapters`` (AdapterHub's ``save_adapter``: bottleneck adapters, Compacter, MAM...)."""
    base_model: str | None = None
    base_revision: str | None = None
    method: Method
    variant: str | None = None
    """LoRA: ``dora``, ``alora`` (activated LoRA), ``mica``, or ``rslora`` when only the
    rank-stabilised scaling is on."""
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] = Field(default_factory=list)
    """Module names (last path component, sorted) the adapter changes, incl. modules_to_save."""
    task_type: str | None = None
    params_trainable: int
    """Number of values in the adapter's tensors, frozen ones excluded (VeRA's shared
    projections, MiCA's lora_B): PEFT's ``get_nb_trainable_parameters()`` after loading, or
    ``details["params_note"]`` says why not."""
    params_base: int | None = None
    params_fraction: float | None = None
    size_bytes: int
    dtypes: list[str]
    inference_overhead: InferenceOverhead
    details: dict[str, Any] = Field(default_factory=dict)
    """Method-specific facts: rank/alpha patterns, per-module ranks, modules_to_save, layers."""
    description: str | None = None
    parent: str | None = None


class AdapterCard(InspectedAdapter):
    """The full card of one stored version (``hub show --json``)."""

    repo: str
    version: int
    commit: str
    tasks: list[str] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    metrics: list[Metric] = Field(default_factory=list)
    files: list[FileEntry]
    aliases: list[str] = Field(default_factory=list)
    lineage: Lineage | None = None
    created_at: datetime

    @property
    def ref(self) -> str:
        """The exact, immutable reference of this version: ``ns/name@<commit>``."""
        return f"{self.repo}@{self.commit}"

    def metric(self, name: str, dataset: str | None = None) -> float | None:
        """The value of metric ``name`` (``NAME@DATASET``, or ``dataset``), or None.

        One rule for every reader (``schemas.metrics``; ``hub ls --sort metric:NAME`` and
        ``--where`` apply it in SQL): the latest value from the most trusted source, measured
        (``hub-eval``) before logged by training (``trainer``) before reported (``push``,
        ``manual``, ``model-index``).
        """
        from schemas.metrics import pick, split_name

        if dataset is None:
            name, dataset = split_name(name)
        chosen = pick(self.metrics, name, dataset)
        return chosen.value if chosen is not None else None
