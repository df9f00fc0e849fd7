"""``hub compose search``: find merge weights on a few examples, keep the merge only if it wins.

Every check runs before the model is loaded (inputs, options, data, shapes: one error, nothing
written). The search itself writes nothing; only its final result is pushed, through the same
path as ``hub compose`` (so a Ctrl-C or a SIGKILL during the search leaves no version), with
the search recorded in the lineage and the held-out comparison attached as an eval record.

Example:
    >>> Registry().compose_search(["team/sql", "team/chat"], "few.jsonl",
    ...                           name="team/mix")                          # doctest: +SKIP
"""

from __future__ import annotations

import os
import platform
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.errors import IncompatibleAdapters, InvalidArgument, SearchRejected

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from compose.search import SearchOutcome
    from hub.registry import PushResult, Registry

SOURCE = "hub-compose-search"


@dataclass
class SearchResult:
    push: PushResult
    outcome: SearchOutcome
    eval_record: dict[str, Any]


def compose_search(
    registry: Registry,
    refs: Sequence[str],
    data: str | os.PathLike[str],
    *,
    name: str,
    operator: str = "linear",
    rank: int | str | None = None,
    energy: float | None = None,
    density: float | None = None,
    budget: int = 40,
    bounds: tuple[float, float] = (-1.5, 1.5),
    l1: float = 0.05,
    holdout: float = 0.2,
    seed: int = 0,
    layer_groups: int = 1,
    device: str = "auto",
    base: str | os.PathLike[str] | None = None,
    keep_anyway: bool = False,
    tasks: Sequence[str] = (),
    progress: Callable[[int, int, float], Any] | None = None,
) -> SearchResult:
    """Search one weight per input of ``refs`` for ``operator`` and push the merge as ``name``.

    ``layer_groups`` G > 1: the decoder layers the adapters touch are cut into G contiguous
    groups of near-equal size, and each input gets one weight per group (N*G searched; a
    module outside the layers takes the last group's weights); the result's recipe records
    the groups' layers and weights (``layer_groups``) instead of ``weights``.

    Raises:
        InvalidArgument (options, fewer than 2 inputs, more layer groups than layers),
        InvalidData (the file), InvalidRecipe,
        IncompatibleAdapters (bases, shapes, methods), SearchRejected (the result did not beat
        the best single input and uniform weights on the held-out rows, without
        ``keep_anyway``).
    """
    from compose.eval_data import read_eval_data
    from compose.evaluate import device_for
    from compose.search import (
        OPERATORS,
        SearchSettings,
        describe_weights,
        grouped,
        run_search,
        split,
    )
    from hub.composer import resolve_inputs
    from schemas.recipe import recipe_from_data

    low, high = bounds
    settings = SearchSettings(budget, (low, high), l1, holdout, seed, layer_groups=layer_groups)
    settings.check(len(refs))
    if operator not in OPERATORS:
        raise InvalidArgument(
            f"--operator {operator!r}: a search weights {', '.join(OPERATORS)}", field="operator"
        )
    dataset = read_eval_data(Path(data))
    split(dataset, settings)  # refuses data a search cannot use, before anything is loaded
    recipe_data: dict[str, Any] = {"operator": operator, "name": name, "inputs": list(refs)}
    for key, value in (("rank", rank), ("energy", energy), ("density", density)):
        if value is not None:
            recipe_data[key] = value
    if operator == "dare":
        recipe_data["seed"] = seed
    recipe = recipe_from_data(recipe_data, "command line")
    where = device_for(device)
    with registry.scratch("compose") as work:
        params, inputs = resolve_inputs(registry, recipe, work)
        for item in inputs:
            if item.card.method != "lora":
                raise IncompatibleAdapters(
                    f"{item.ref} is a {item.card.method} adapter; a search weights LoRA adapters",
                    adapter=item.ref,
                )
        from compose.adapter_io import load_adapter
        from compose.operators import merge_modules

        adapters = [load_adapter(i.folder, i.ref, "lora", operator) for i in inputs]
        # Shapes, embeddings and ranks are checked here, on the uniform merge, before loading.
        merge_modules(adapters, inputs, operator, params, "cpu")
        layout = settings.layout([m for a in adapters for m in a.modules])
        model, tokenizer = _model(registry, base, inputs[0].card, work / "base", where)
        outcome = run_search(
            model, tokenizer, adapters, inputs, operator, params, dataset, settings, where,
            progress, layout,
        )  # fmt: skip
        del model
    found, uniform, single = (outcome.holdout[k] for k in ("found", "uniform", "best_single"))
    best_ref = refs[outcome.holdout["best_single_index"]]
    if not outcome.beats_baselines and not keep_anyway:
        raise SearchRejected(
            f"the weights found ({describe_weights(outcome.weights, layout)}) do not beat"
            f" the baselines on the {outcome.holdout['rows']} held-out rows ({outcome.metric}"
            f" loss, lower is better): found {found:.4f}, best single ({best_ref}) {single:.4f},"
            f" uniform {uniform:.4f}; nothing was stored (--keep-anyway stores it regardless)",
            found=found,
            best_single=single,
            uniform=uniform,
        )
    record = _search_record(outcome, dataset, settings, operator, device, keep_anyway)
    if layout is None:
        final = recipe.model_copy(update={"weights": outcome.weights, "tasks": list(tasks)})
    else:
        found_groups = grouped(outcome.weights, layout)
        final = recipe_from_data(
            {**recipe_data, "layer_groups": found_groups, "tasks": list(tasks)}, "command line"
        )
    from hub.composer import compose

    push = compose(registry, final, device, search=record)
    eval_record = _attach_eval(registry, push, outcome, dataset, refs, where)
    return SearchResult(push, outcome, eval_record)


def _model(registry: Registry, base: Any, card: Any, scratch: Path, device: Any) -> tuple[Any, Any]:
    from hub.evals import _base, _tokenizer, load_base_model

    base_dir, _ = _base(registry, base, card, scratch)
    return load_base_model(base_dir, "fp32", device), _tokenizer(base_dir)


def _search_record(
    outcome: SearchOutcome,
    dataset: Any,
    settings: Any,
    operator: str,
    device: str,
    keep_anyway: bool,
) -> dict[str, Any]:
    """What the lineage records: enough to see how the weights were found (the recipe beside
    it holds the weights, so `hub verify --rebuild` recomputes the merge from them). With
    layer groups, ``weights`` and each trace step's are the full vector, group by group, and
    ``layer_groups`` the layers of each group (absent with one group, as before)."""
    holdout = {k: v for k, v in outcome.holdout.items() if k != "scores"}
    record: dict[str, Any] = {
        "optimizer": "cma-es",
        "operator": operator,
        "weights": outcome.weights,
        "data_sha256": dataset.sha256,
        "data_rows": len(dataset.rows),
        "metric": outcome.metric,
        "budget": settings.budget,
        "bounds": list(settings.bounds),
        "l1": settings.l1,
        "holdout": settings.holdout,
        "seed": settings.seed,
        "device": device,
        "kept_anyway": keep_anyway and not outcome.beats_baselines,
        "held_out": holdout,
        "seconds_per_candidate": round(outcome.seconds_per_candidate, 6),
        "trace": [
            {"weights": s.weights, "loss": s.loss, "objective": s.objective} for s in outcome.trace
        ],
    }
    if outcome.layout is not None:
        record["layer_groups"] = outcome.layout
    return record


def _attach_eval(
    registry: Registry,
    push: PushResult,
    outcome: SearchOutcome,
    dataset: Any,
    refs: Sequence[str],
    device: Any,
) -> dict[str, Any]:
    """The held-out comparison as an eval record on the new version (``hub show`` lists it)."""
    from hub.catalog.rows import utcnow
    from hub.eval_store import store_record
    from hub.evals import _summaries, _versions

    metric = outcome.metric
    scores = outcome.holdout["scores"]

    def summary(values: list[float]) -> dict[str, Any]:
        # Stored as the data's own metric (cross_entropy, or target_logprob with its sign).
        sign = 1.0 if metric == "cross_entropy" else -1.0
        return _summaries([metric], {metric: [sign * v for v in values]}, 0)

    card = push.card
    record: dict[str, Any] = {
        "id": f"ev-{uuid.uuid4().hex[:12]}",
        "ref": card.ref,
        "commit": card.commit,
        "source": SOURCE,
        "dataset": {
            "sha256": dataset.sha256,
            "rows": outcome.holdout["rows"],
            "kind": dataset.kind,
            "name": dataset.path.name,
            "split": "held-out",
        },
        "metrics": summary(scores["found"]),
        "base": None,
        "delta": None,
        "cost": None,
        "comparison": {
            "best_single": {
                "ref": refs[outcome.holdout["best_single_index"]],
                "metrics": summary(scores["best_single"]),
            },
            "uniform": {"metrics": summary(scores["uniform"])},
            "beats_both": outcome.beats_baselines,
        },
        "config": {"search": True, "device": str(device)},
        "versions": _versions(),
        "device": f"{device} ({platform.machine()})",
        "seconds": round(outcome.seconds, 3),
        "created_at": utcnow(),
    }
    with registry.store_lock(shared=True):
        store_record(registry, card, record)
    return record
