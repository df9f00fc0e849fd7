"""The Hugging Face ``model-index`` in a README's YAML front matter: read at push, written by
``hub pull --with-evals``.

The format (huggingface_hub's ``ModelCardData.eval_results`` reads the same)::

    ---
    model-index:
    - name: team/sql-lora
      results:
      - task: {type: text-generation}
        dataset: {type: spider, name: spider, split: validation}
        metrics:
        - {type: exact_match, value: 0.71, name: exact_match}
    ---

Reading: each metric's name is its ``type`` (else its ``name``), its dataset the result's
``dataset.type`` (else ``dataset.name``); values must be numbers (or numeric strings).
Writing: one result per dataset, each metric the value ``card.metric(NAME@DATASET)`` gives
(``schemas.metrics``), dataset ``type`` and ``name`` both the metric's dataset; metrics
recorded without a dataset are left out (the format requires one). The rest of the front
matter and the README's body are kept as they are. Written values read back exactly (YAML
floats are written with Python's shortest round-tripping repr).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.folders import read_regular
from schemas.errors import InvalidAdapter, InvalidArgument

if TYPE_CHECKING:
    from schemas.card import AdapterCard

README = "README.md"
_MAX_README_BYTES = 4 << 20
_FRONT = re.compile(r"---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|$)", flags=re.DOTALL)

TASK_TYPES = {
    "CAUSAL_LM": "text-generation",
    "SEQ_2_SEQ_LM": "text2text-generation",
    "SEQ_CLS": "text-classification",
    "TOKEN_CLS": "token-classification",
    "QUESTION_ANS": "question-answering",
    "FEATURE_EXTRACTION": "feature-extraction",
}
"""PEFT's ``task_type`` -> the Hugging Face pipeline tag a model-index ``task.type`` names."""


def _front_matter(text: str, where: str) -> tuple[dict[str, Any] | None, str]:
    """(front matter, body); None when there is none. Unparsable YAML raises."""
    import yaml

    match = _FRONT.match(text)
    if match is None:
        return None, text
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0]
        raise InvalidArgument(f"{where}: its front matter is not valid YAML ({first})") from None
    return (data if isinstance(data, dict) else {}), text[match.end() :]


def read_model_index(folder: Path) -> list[dict[str, Any]]:
    """The results of ``folder/README.md``'s ``model-index``: one entry per result, as
    ``{"dataset": {...}, "task": {...}, "model": NAME, "index": (i, j), "metrics": {name:
    {"value", "verified"}}}``. None found: ``[]`` (a README whose front matter is not YAML is
    not read, as for its description).

    Raises:
        InvalidAdapter: a ``model-index`` of the wrong shape, naming the field.
    """
    import yaml

    data = read_regular(folder / README, _MAX_README_BYTES)
    if data is None:
        return []
    match = _FRONT.match(data.decode("utf-8", errors="replace"))
    if match is None:
        return []
    try:
        front = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return []
    if not isinstance(front, dict) or front.get("model-index") is None:
        return []
    where = f"{folder / README}: model-index"

    def bad(field: str, what: str) -> InvalidAdapter:
        return InvalidAdapter(
            f"{where}{field} {what} (fix the README's front matter, or remove model-index)",
            path=str(folder / README),
            field=f"model-index{field}",
        )

    models = front["model-index"]
    if not isinstance(models, list):
        raise bad("", "must be a list of models")
    out = []
    for i, model in enumerate(models):
        if not isinstance(model, dict) or not isinstance(model.get("results", []), list):
            raise bad(f"[{i}]", "must be a mapping with a list of results")
        for j, result in enumerate(model.get("results") or []):
            at = f"[{i}].results[{j}]"
            if not isinstance(result, dict):
                raise bad(at, "must be a mapping")
            dataset = result.get("dataset") or {}
            task = result.get("task") or {}
            if not isinstance(dataset, dict) or not isinstance(task, dict):
                raise bad(at, "dataset and task must be mappings")
            metrics = result.get("metrics") or []
            if not isinstance(metrics, list):
                raise bad(f"{at}.metrics", "must be a list")
            values: dict[str, dict[str, Any]] = {}
            for k, metric in enumerate(metrics):
                mat = f"{at}.metrics[{k}]"
                if not isinstance(metric, dict):
                    raise bad(mat, "must be a mapping")
                name = metric.get("type") or metric.get("name")
                if not isinstance(name, str) or not name.strip():
                    raise bad(f"{mat}.type", "must name the metric")
                values[name.strip()] = {
                    "value": _number(
                        metric.get("value"), lambda what, f=mat: bad(f"{f}.value", what)
                    ),
                    "verified": bool(metric.get("verified", False)),
                }
            dataset_name = dataset.get("type") or dataset.get("name")
            out.append(
                {
                    "model": model.get("name"),
                    "index": [i, j],
                    "task": {k: v for k, v in task.items() if isinstance(v, str)},
                    "dataset": {
                        "name": str(dataset_name) if dataset_name is not None else None,
                        **{
                            k: str(v)
                            for k, v in dataset.items()
                            if k in ("type", "split", "config", "revision") and v is not None
                        },
                    },
                    "metrics": values,
                }
            )
    return out


def _number(value: Any, bad: Any) -> float:
    if isinstance(value, bool):
        raise bad(f"must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad(f"must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise bad(f"must be a finite number, got {value!r}")
    return number


def model_index(card: AdapterCard) -> tuple[list[dict[str, Any]], list[str]]:
    """``card``'s metrics as a ``model-index`` (one model, one result per dataset), and the
    names of the metrics left out because they have no dataset."""
    from schemas.metrics import pick

    datasets: dict[str, list[str]] = {}
    left_out: list[str] = []
    for metric in card.metrics:
        if metric.dataset is None:
            if metric.name not in left_out:
                left_out.append(metric.name)
        elif metric.name not in datasets.setdefault(metric.dataset, []):
            datasets[metric.dataset].append(metric.name)
    results = []
    task_type = TASK_TYPES.get(card.task_type or "", "text-generation")
    for dataset, names in datasets.items():
        metrics = []
        for name in names:
            chosen = pick(card.metrics, name, dataset)
            assert chosen is not None  # the name was found on this dataset just above
            metrics.append({"type": name, "value": chosen.value, "name": name})
        results.append(  # a dict of its own per result: a shared one is dumped as &id001/*id001
            {
                "task": {"type": task_type},
                "dataset": {"type": dataset, "name": dataset},
                "metrics": metrics,
            }
        )
    return [{"name": card.repo, "results": results}] if results else [], left_out


def write_model_index(folder: Path, card: AdapterCard) -> tuple[int, list[str]]:
    """Put ``card``'s metrics into ``folder/README.md``'s front matter as ``model-index``
    (replacing one that is there; creating the README if there is none).

    Returns:
        (number of metrics written, names left out for lack of a dataset). Nothing is
        written when there is no metric with a dataset.

    Raises:
        InvalidArgument: the README's front matter is not valid YAML (it would be lost).
    """
    import yaml

    index, left_out = model_index(card)
    if not index:
        return 0, left_out
    readme = folder / README
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    front, body = _front_matter(text, f"{card.repo}'s {README}")
    front = dict(front or {})
    front["model-index"] = index
    dumped = yaml.safe_dump(front, sort_keys=False, allow_unicode=True)
    if readme.is_symlink():  # never write through a link into the store
        readme.unlink()
    readme.write_text(f"---\n{dumped}---\n{body}", encoding="utf-8")
    return sum(len(r["metrics"]) for r in index[0]["results"]), left_out
