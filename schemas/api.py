"""Request and response bodies of the team hub's HTTP API (``hub serve``).

The native API (``/api/hub/v1``) documents itself with these models in its OpenAPI schema;
the Hugging Face protocol models describe only the fields our server reads from the
``huggingface_hub`` client, and let any other field through (the client sends more than we
need, and newer clients may add some).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat

from schemas.card import AdapterCard

SHA256 = r"^[0-9a-f]{64}$"
MAX_JSON_BYTES = 1024 * 1024
"""The largest JSON request body the server reads (a push's file list included)."""
MAX_PUSH_FILES = 10_000
"""The most files one pushed version may list."""


# -- native API ----------------------------------------------------------------------------
class FileSpec(BaseModel):
    """One file of a pushed version: its place in the adapter folder and its stored blob."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(max_length=1000)
    sha256: str = Field(pattern=SHA256)
    size: int = Field(ge=0)


class TrainerMetric(BaseModel):
    """A value logged at the step the pushed weights are from."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    value: FiniteFloat


class TrainerBest(BaseModel):
    """``best_metric`` of ``trainer_state.json``: its name, value, step and checkpoint, and
    whether it describes the pushed weights (None: unknown)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    value: FiniteFloat
    step: int | None = None
    checkpoint: str | None = Field(default=None, max_length=300)
    these_weights: bool | None = None


class TrainerFacts(BaseModel):
    """What the pushed folder's ``trainer_state.json`` says, read where the folder is
    (``hub.checkpoints.Checkpoint``): the server gets only the adapter's files, not the file
    itself (training state) nor the ``checkpoint-<step>/`` folders that tell which step an
    output_dir's weights are from."""

    model_config = ConfigDict(extra="forbid")
    folder: str = Field(max_length=300)
    step: int
    epoch: FiniteFloat | None = None
    metrics: list[TrainerMetric] = Field(default_factory=list, max_length=1000)
    weights_step: int | None = None
    best: TrainerBest | None = None
    history: list[dict[str, int | FiniteFloat]] = Field(default_factory=list, max_length=100_000)
    """The evaluation entries of ``log_history`` (step, epoch and the ``eval_*`` values)."""
    notes: list[str] = Field(default_factory=list, max_length=100)
    state_sha256: str = Field(pattern=SHA256)


class NewVersion(BaseModel):
    """A push: the files (uploaded beforehand with ``PUT /blobs/{sha256}``) and annotations."""

    model_config = ConfigDict(extra="forbid")
    files: list[FileSpec] = Field(min_length=1, max_length=MAX_PUSH_FILES)
    tasks: list[str] = Field(default_factory=list, max_length=100)
    tags: dict[str, str] = Field(default_factory=dict)
    metrics: list[str] = Field(default_factory=list, max_length=100)
    parent: str | None = Field(default=None, max_length=300)
    description: str | None = Field(default=None, max_length=10_000)
    allow_nonfinite: bool = False
    trainer: TrainerFacts | None = None


class AliasBody(BaseModel):
    """``PUT .../aliases/{alias}``: the revision the alias should point at."""

    model_config = ConfigDict(extra="forbid")
    revision: str = Field(max_length=100)


class PushedCard(AdapterCard):
    """The card of the version a push or compose request produced."""

    created: bool
    """False when the files equal the latest version's (no new version was made)."""
    others: list[PushedCard] = Field(default_factory=list)
    """A multi-adapter folder's other adapters (one subfolder each), each pushed as its own
    repository ``NAME-<adapter>``, exactly as ``hub push`` does locally."""


class BlobStored(BaseModel):
    """Answer to a blob upload."""

    sha256: str
    size: int
    stored: bool
    """False when the store already held these bytes."""


class ErrorDetail(BaseModel):
    code: str
    """A ``HubError`` code (a kind in ``hub.errors_http.HTTP``), e.g. ``adapter_not_found``."""
    message: str


class ErrorBody(BaseModel):
    """Every native API error: ``{"error": {"code", "message"}}`` (also in ``X-Error-Code``)."""

    error: ErrorDetail


# -- Hugging Face protocol (the fields huggingface_hub sends) ------------------------------
class _HfBody(BaseModel):
    model_config = ConfigDict(extra="allow")


class HfCreateRepo(_HfBody):
    name: str = Field(max_length=200)
    organization: str | None = Field(default=None, max_length=200)
    type: str | None = None


class HfPreuploadFile(_HfBody):
    path: str = Field(max_length=1000)
    size: int = Field(default=0, ge=0)
    sample: str | None = None


class HfPreupload(_HfBody):
    files: list[HfPreuploadFile] = Field(max_length=10_000)


class HfLfsObject(_HfBody):
    oid: str = Field(max_length=200)
    size: int = Field(ge=0)


class HfLfsBatch(_HfBody):
    operation: str
    objects: list[HfLfsObject] = Field(max_length=10_000)
    transfers: list[str] = Field(default_factory=lambda: ["basic"])


class HfLfsVerify(_HfBody):
    oid: str = Field(max_length=200)
    size: int = Field(ge=0)


# -- eval records ---------------------------------------------------------------------------
class EvalMetricBody(BaseModel):
    """One metric of a posted eval record (``hub.evals``' shape)."""

    model_config = ConfigDict(extra="allow")
    value: FiniteFloat
    n: int | None = Field(default=None, ge=0)
    stderr: FiniteFloat | None = None
    ci95: list[FiniteFloat] | None = Field(default=None, min_length=2, max_length=2)
    higher_is_better: bool


class EvalDatasetBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    sha256: str = Field(pattern=SHA256)
    rows: int = Field(ge=1)
    kind: str = Field(max_length=40)
    name: str = Field(max_length=255)


class EvalRecordBody(BaseModel):
    """An eval record measured by ``hub eval --from`` on a client, posted to the version it
    scored (``POST .../evals``); its dataset and per-example results are uploaded first with
    ``PUT /blobs/{sha256}``. Fields other engineers' runners add (cost, forgetting...) pass
    through; the whole body is bounded like every JSON body."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(pattern=r"^ev-[0-9a-f]{12}$")
    commit: str = Field(pattern=r"^[0-9a-f]{40}$")
    source: Literal["hub-eval"]
    dataset: EvalDatasetBody
    metrics: dict[str, EvalMetricBody] = Field(min_length=1, max_length=100)
    results_sha256: str = Field(pattern=SHA256)
    created_at: str = Field(max_length=40)


class NewEval(BaseModel):
    """``POST /adapters/{namespace}/{name}/evals``."""

    model_config = ConfigDict(extra="forbid")
    record: EvalRecordBody
