"""``hub eval --lm-eval TASK --include-path DIR``: the options, and the call into the backend.

Kept apart from ``cli/eval.py`` so that the native options and this backend's evolve apart;
``eval_command`` takes these options through ``lm_eval_options`` and hands them to
``lm_eval_records`` when ``--lm-eval`` is given.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from schemas.errors import InvalidArgument

F = TypeVar("F", bound=Callable[..., Any])


def lm_eval_options(func: F) -> F:
    """``--lm-eval TASK`` and ``--include-path DIR``."""
    func = click.option(
        "--include-path",
        type=click.Path(path_type=Path),
        help="With --lm-eval: the folder of lm-eval task YAMLs to search (only it).",
    )(func)
    return click.option(
        "--lm-eval",
        "lm_eval_task",
        metavar="TASK",
        help="Score with lm-evaluation-harness's evaluator on a local task YAML (needs the"
        " `eval` extra: pip install 'hub-adapters[eval]').",
    )(func)


NEEDS_DATA = (
    "hub eval needs adapters and --data FILE.jsonl (or --lm-eval TASK --include-path DIR, or"
    " --rerun EVAL_ID); e.g. hub eval team/sql-lora --data dev.jsonl"
)


def lm_eval_records(
    registry: Any,
    refs: tuple[str, ...],
    task: str | None,
    include_path: Path | None,
    *,
    data: Path | None,
    metrics: tuple[str, ...],
    **options: Any,
) -> list[dict[str, Any]] | None:
    """The records of an lm-eval run, or ``None`` when neither option is given (native eval).

    Raises:
        InvalidArgument: ``--lm-eval`` without ``--include-path`` (or the reverse), with
            ``--data`` or ``--metric``; neither ``--data`` nor ``--lm-eval``.
    """
    if task is None and include_path is None:
        if data is None:
            raise InvalidArgument(NEEDS_DATA)
        return None
    if task is None or include_path is None:
        raise InvalidArgument("--lm-eval TASK and --include-path DIR go together: give both")
    if data is not None:
        raise InvalidArgument(
            "--data and --lm-eval are two backends: give one (the task YAML names its data)"
        )
    if metrics:
        raise InvalidArgument(
            "--metric does not apply to --lm-eval: the task's metric_list chooses the metrics"
        )
    return registry.evaluate_lm_eval(list(refs), task, include_path, **options)
