"""Evaluation data: local JSONL files, their kind inferred from the fields, checked row by row.

Three kinds, one per set of fields (every row of a file must be of the same kind):

- ``{"text": ...}`` -> ``text``: ``cross_entropy`` and ``perplexity``.
- ``{"prompt": ..., "target": ...}`` -> ``generation``: ``target_logprob`` and ``exact_match``.
- ``{"prompt": ..., "choices": [...], "answer": index or choice text}`` -> ``choice``:
  ``accuracy`` and ``accuracy_norm``.

Other keys (``id``, ``meta``...) are allowed and ignored. Errors name the file, the line and the
field, so a user can fix the file: ``data.jsonl line 3: "choices" must be a list of strings``.
No torch here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from schemas.errors import InvalidData

Kind = Literal["text", "generation", "choice"]

METRICS: dict[Kind, tuple[str, ...]] = {
    "text": ("cross_entropy", "perplexity"),
    "generation": ("target_logprob", "exact_match"),
    "choice": ("accuracy", "accuracy_norm"),
}
"""The metrics each kind of data can produce, in the order they are reported."""

HIGHER_IS_BETTER: dict[str, bool] = {
    "cross_entropy": False,
    "perplexity": False,
    "target_logprob": True,
    "exact_match": True,
    "accuracy": True,
    "accuracy_norm": True,
}

LIKELIHOOD_METRICS = ("cross_entropy", "perplexity", "target_logprob")
"""The metrics computed from the model's log-probabilities of given text (not from an argmax):
continuous, and undefined for a voting ensemble."""

# A bound on what is read into memory: evaluation sets are examples, not corpora.
MAX_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Row:
    """One example. ``answer`` is the index into ``choices`` (a text answer is resolved)."""

    text: str | None = None
    prompt: str | None = None
    target: str | None = None
    choices: tuple[str, ...] = ()
    answer: int | None = None
    line: int = 0
    """The row's line in its file (1-based), for messages about it once it is tokenized."""


@dataclass(frozen=True)
class EvalData:
    """A checked evaluation file: its kind, rows, and the sha256 of its bytes."""

    path: Path
    kind: Kind
    rows: tuple[Row, ...]
    sha256: str

    @property
    def metrics(self) -> tuple[str, ...]:
        return METRICS[self.kind]


def _kind_of(obj: dict[str, Any]) -> Kind | None:
    if "choices" in obj or "answer" in obj:
        return "choice"
    if "target" in obj:
        return "generation"
    if "text" in obj:
        return "text"
    return None


def _string(obj: dict[str, Any], key: str, where: str) -> str:
    if key not in obj:
        raise InvalidData(f'{where}: missing field "{key}"', field=key)
    value = obj[key]
    if not isinstance(value, str):
        raise InvalidData(
            f'{where}: "{key}" must be a string, got {type(value).__name__}', field=key
        )
    return value


def _row(obj: dict[str, Any], kind: Kind, where: str, line: int) -> Row:
    if kind == "text":
        text = _string(obj, "text", where)
        if not text:
            raise InvalidData(f'{where}: "text" is empty', field="text")
        return Row(text=text, line=line)
    prompt = _string(obj, "prompt", where)
    if kind == "generation":
        target = _string(obj, "target", where)
        if not target.strip():
            raise InvalidData(f'{where}: "target" is empty', field="target")
        return Row(prompt=prompt, target=target, line=line)
    if "choices" not in obj:
        raise InvalidData(f'{where}: missing field "choices"', field="choices")
    choices = obj["choices"]
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c for c in choices)
    ):
        raise InvalidData(
            f'{where}: "choices" must be a list of at least 2 non-empty strings', field="choices"
        )
    if "answer" not in obj:
        raise InvalidData(f'{where}: missing field "answer"', field="answer")
    answer = obj["answer"]
    if isinstance(answer, bool) or not isinstance(answer, int | str):
        raise InvalidData(
            f'{where}: "answer" must be an index or one of the choices, got'
            f" {type(answer).__name__}",
            field="answer",
        )
    if isinstance(answer, str):
        if answer not in choices:
            raise InvalidData(
                f'{where}: "answer" {answer!r} is not among the choices', field="answer"
            )
        index = choices.index(answer)
    else:
        if not 0 <= answer < len(choices):
            raise InvalidData(
                f'{where}: "answer" {answer} is out of range for {len(choices)} choices',
                field="answer",
            )
        index = answer
    return Row(prompt=prompt, choices=tuple(choices), answer=index, line=line)


def read_eval_data(path: str | Path, *, limit: int | None = None) -> EvalData:
    """Read and check an evaluation JSONL file.

    Args:
        path: the file; blank lines are skipped.
        limit: keep only the first ``limit`` examples (the digest is still of the whole file,
            and the limit is part of an eval's config).

    Raises:
        InvalidData: the file is missing, empty, not UTF-8, not JSON lines, of mixed kinds,
            or a row lacks a field or has one of the wrong type.

    Example:
        >>> data = read_eval_data("qa.jsonl")                               # doctest: +SKIP
        >>> data.kind, len(data.rows), data.metrics
        ('generation', 200, ('target_logprob', 'exact_match'))
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidData(f"{path}: no such file", path=str(path))
    if path.stat().st_size > MAX_BYTES:
        raise InvalidData(
            f"{path}: larger than {MAX_BYTES // 2**20} MiB; evaluate a sample (--limit) of it",
            path=str(path),
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise InvalidData(f"{path} line {line}: not UTF-8", path=str(path)) from None
    kind: Kind | None = None
    rows: list[Row] = []
    for number, line_text in enumerate(text.splitlines(), start=1):
        if not line_text.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            obj = json.loads(line_text)
        except json.JSONDecodeError as err:
            raise InvalidData(f"{where}: not JSON ({err.msg})", path=str(path)) from None
        if not isinstance(obj, dict):
            raise InvalidData(f"{where}: each line must be a JSON object", path=str(path))
        row_kind = _kind_of(obj)
        if row_kind is None and kind is not None:
            # The file's kind is known: name the field this row lacks (``_row`` does).
            row_kind = kind
        if row_kind is None:
            raise InvalidData(
                f'{where}: no "text", "prompt"/"target" or "prompt"/"choices"/"answer" fields',
                path=str(path),
            )
        if kind is None:
            kind = row_kind
        elif row_kind != kind:
            raise InvalidData(
                f"{where}: a {row_kind} row in a file of {kind} rows (one kind per file)",
                path=str(path),
            )
        rows.append(_row(obj, kind, where, number))
        if limit is not None and len(rows) >= limit:
            break
    if kind is None:
        raise InvalidData(f"{path}: no examples (the file is empty)", path=str(path))
    return EvalData(path=path, kind=kind, rows=tuple(rows), sha256=hashlib.sha256(raw).hexdigest())


def check_metrics(data: EvalData, metrics: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The metrics to compute: ``metrics`` if the data can produce each, else all of its kind."""
    if not metrics:
        return data.metrics
    for name in metrics:
        if name not in data.metrics:
            raise InvalidData(
                f"metric {name!r} cannot be computed from {data.kind} data ({data.path.name});"
                f" it gives {', '.join(data.metrics)}",
                field="metric",
            )
    return tuple(metrics)
