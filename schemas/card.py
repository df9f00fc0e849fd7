"""The adapter card: everything the hub knows about one adapter version.

Cards are extracted at push time from the adapter files (``hub.inspect``), never typed by
hand; users add only ``tasks``, ``tags``, ``metrics`` and a description. The JSON form of a
card is what ``hub ls --json`` / ``hub show --json`` print and what the server returns.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    PrivateAttr,
    computed_field,
    model_validator,
)

from schemas.errors import InvalidArgument
from schemas.methods import PROMPT_METHODS

__all__ = ["LEDGER", "PROMPT_METHODS"]

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
    def parse(cls, text: str, *, what: str = "--metric") -> Metric:
        """Parse ``NAME=VALUE[@DATASET]``.

        Args:
            what: how the error names the text: the option or argument it came from
                (``--metric`` of ``hub push``, the ``metric`` of ``hub metric add``).

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
                f"invalid {what} {text!r}: expected NAME=VALUE[@DATASET], e.g. accuracy=0.71@mmlu"
            )
        if not math.isfinite(value):
            raise InvalidArgument(
                f"invalid {what} {text!r}: the value must be a finite number"
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
    # -- the parameter ledger (hub.inspect.ledger computes it; the README's table says how,
    # per method). A count is None when the files cannot tell; params_unknown says why.
    params_trained: int | None = None
    """Values the optimizer updated, from the config: P-tuning's prompt encoder (not its saved
    table), AdaLoRA's init_r triplets; frozen factors (VeRA's projections, MiCA's lora_B,
    LoRA-FA's lora_A when declared) left out. ``params_notes["params_trained"]`` says why it
    differs from PEFT's ``get_nb_trainable_parameters()`` after loading, where it does."""
    params_stored: int = Field(validation_alias=AliasChoices("params_stored", "params_trainable"))
    """Values in the adapter's files that are the adapter's own; the frozen ones stored beside
    them (VeRA's vera_A/vera_B, MiCA's lora_B, base embedding copies) are
    ``params_stored_frozen``. Read from ``params_trainable`` in cards written before the
    ledger (the same count)."""
    params_stored_by_dtype: dict[str, int] = Field(default_factory=dict)
    """``params_stored`` split by the tensors' dtype (``{"f32": 1024}``)."""
    params_stored_frozen: int = 0
    """Frozen values stored in the files beside the adapter's own."""
    params_changed_when_merged: int | None = None
    """Base values a merge rewrites: sum of d x k over the rewritten base weights (IA3: the
    scaled weights; modules_to_save: the whole module; trained biases); 0 for prompt methods;
    None for an adapter that cannot merge."""
    params_extra_at_inference: int | None = None
    """Values the unmerged forward pass reads beyond the base's own: the adapter's tensors,
    shared projections once, saved module copies; prompt methods: the virtual tokens'
    embeddings (the table PEFT loads)."""
    params_trained_fraction: float | None = None
    params_stored_fraction: float | None = None
    params_changed_when_merged_fraction: float | None = None
    params_extra_at_inference_fraction: float | None = None
    params_unknown: dict[str, str] = Field(default_factory=dict)
    """Ledger field -> why it is None (the file cannot tell, the base's shapes are unknown)."""
    params_notes: dict[str, str] = Field(default_factory=dict)
    """Ledger field -> how it was counted where a reader could expect otherwise."""
    params_base: int | None = None
    """The base model's parameter count, when it can be read (a local folder's headers or
    config): the denominator of every ``*_fraction``."""
    params_fraction: float | None = None
    """``params_stored / params_base``, its name before the ledger (= params_stored_fraction)."""
    size_bytes: int
    dtypes: list[str]
    inference_overhead: InferenceOverhead
    details: dict[str, Any] = Field(default_factory=dict)
    """Method-specific facts: rank/alpha patterns, per-module ranks, modules_to_save, layers."""
    description: str | None = None
    parent: str | None = None

    model_config = ConfigDict(populate_by_name=True)
    _ledger_parts: Any = PrivateAttr(default=None)
    """``hub.inspect.ledger.LedgerParts`` of a fresh inspection (a composite combines them)."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def params_trainable(self) -> int:
        """The old name of ``params_stored``, kept for scripts (DESIGN.md's card contract)."""
        return self.params_stored


LEDGER = (
    "params_trained",
    "params_stored",
    "params_changed_when_merged",
    "params_extra_at_inference",
)
"""The parameter ledger's counts, in the order tables show them; each has a ``_fraction``."""


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
