"""Merge weights found by gradient-free search on a few examples (LoraHub's idea, done exactly).

Each candidate is one weight per input adapter, or with layer groups one weight per input
for each group of decoder layers (``compose.layer_groups``: N*G weights, searched as one
vector, group by group: ``[w_1..w_N of group 1, ..., w_1..w_N of group G]``). It is scored
as the merge ``hub compose`` would build with those weights (``operators.merge_modules``:
cat/linear exact, svd truncated in low rank, TIES/DARE on the dense deltas, then factored),
applied to the base model through forward hooks that add ``x A^T B^T`` to each adapted
module's output: the base weights are never rewritten and the model is loaded once. The
objective is the mean eval loss on the search rows (cross-entropy for text rows, minus the
target log-likelihood for prompt/target rows) plus ``l1 * sum |w_i|`` (with G groups
``l1 / G * sum |w_ig|``, the mean over groups, so the penalty of a mixture does not grow
with G); CMA-ES (``cma``) minimises it within ``bounds``, seeded.

The held-out rows then score the weights found against the best single input (alone, weight 1)
and against uniform weights (1/N each), both without the L1 term.

Reference: Huang et al., LoraHub (https://arxiv.org/abs/2307.13269); Hansen, The CMA
Evolution Strategy (https://arxiv.org/abs/1604.00772).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from compose.eval_data import EvalData
from schemas.errors import InvalidArgument, InvalidData

if TYPE_CHECKING:
    from compose.adapter_io import LoadedAdapter, ModuleLora
    from compose.operators import ComposeInput

OPERATORS = ("linear", "cat", "svd", "ties", "dare")
METRIC = {"text": "cross_entropy", "generation": "target_logprob"}
"""The loss each kind of data gives: cross-entropy, or minus the target log-likelihood."""


@dataclass(frozen=True)
class SearchSettings:
    budget: int = 40
    bounds: tuple[float, float] = (-1.5, 1.5)
    l1: float = 0.05
    holdout: float = 0.2
    seed: int = 0
    layer_groups: int = 1

    def check(self, inputs: int) -> None:
        """One ``InvalidArgument`` naming the option, before any work."""
        if inputs < 2:
            raise InvalidArgument(
                f"a search needs at least 2 input adapters, got {inputs}", field="refs"
            )
        low, high = self.bounds
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise InvalidArgument(
                f"--bounds {low:g},{high:g}: expected LOW,HIGH with LOW < HIGH, e.g. -1.5,1.5",
                field="bounds",
            )
        if self.budget <= 0:
            raise InvalidArgument(
                f"--budget must be a positive number of candidates, got {self.budget}",
                field="budget",
            )
        if not (math.isfinite(self.l1) and self.l1 >= 0):
            raise InvalidArgument(f"--l1 must be >= 0, got {self.l1:g}", field="l1")
        if not 0 < self.holdout < 1:
            raise InvalidArgument(
                f"--holdout must be a fraction in (0, 1), got {self.holdout:g}", field="holdout"
            )
        if self.layer_groups < 1:
            raise InvalidArgument(
                f"--layer-groups must be a positive number of groups, got {self.layer_groups}",
                field="layer_groups",
            )

    def layout(self, modules: Sequence[str]) -> list[list[int]] | None:
        """The decoder layers of each group (contiguous, near-equal, by layer index) of the
        layers ``modules`` sit in; None for one group (the recipe keeps plain ``weights``).

        Raises:
            InvalidArgument: more groups than layers.
        """
        from compose.layer_groups import describe_layers, split_layers, touched_layers

        if self.layer_groups == 1:
            return None
        layers = touched_layers(modules)
        if not layers:
            raise InvalidArgument(
                f"--layer-groups {self.layer_groups}: the adapters touch no decoder layer (no"
                " module name has a layer index), so there is one group; leave --layer-groups"
                " out",
                field="layer_groups",
            )
        if self.layer_groups > len(layers):
            raise InvalidArgument(
                f"--layer-groups {self.layer_groups}: the adapters touch {len(layers)} decoder"
                f" layers ({describe_layers(layers)}); give at most {len(layers)}",
                field="layer_groups",
            )
        return split_layers(layers, self.layer_groups)


def grouped(weights: Sequence[float], layout: list[list[int]]) -> list[dict[str, Any]]:
    """A searched vector (group by group) as a recipe's ``layer_groups``."""
    count = len(weights) // len(layout)
    return [
        {"layers": list(layers), "weights": list(weights[g * count : (g + 1) * count])}
        for g, layers in enumerate(layout)
    ]


def describe_weights(
    weights: Sequence[float], layout: list[list[int]] | None, digits: int = 3, sep: str = ", "
) -> str:
    """``0.5, 0.5``, or per group ``layers 0-1: 0.9, 0.1; layers 2-3: 0.2, 0.8``."""
    from compose.layer_groups import describe_layers

    def numbers(values: Sequence[float]) -> str:
        return sep.join(f"{w:.{digits}g}" for w in values)

    if layout is None:
        return numbers(weights)
    return "; ".join(
        f"{describe_layers(g['layers'])}: {numbers(g['weights'])}" for g in grouped(weights, layout)
    )


def split(data: EvalData, settings: SearchSettings) -> tuple[EvalData, EvalData]:
    """Seeded split into search rows and held-out rows; refuses data a search cannot use."""
    if data.kind not in METRIC:
        raise InvalidData(
            f"{data.path.name}: {data.kind} rows give accuracy, a step function a search cannot"
            ' descend; give {"text": ...} or {"prompt": ..., "target": ...} rows (the answer'
            " as the target)",
            path=str(data.path),
        )
    count = len(data.rows)
    held = max(1, round(settings.holdout * count))
    if count - held < 1:
        raise InvalidData(
            f"{data.path.name}: {count} row(s) cannot be split into search and held-out rows"
            f" (--holdout {settings.holdout:g}); give at least 2 rows",
            path=str(data.path),
        )
    order = list(range(count))
    random.Random(settings.seed).shuffle(order)
    rows = [data.rows[i] for i in order]
    return replace(data, rows=tuple(rows[held:])), replace(data, rows=tuple(rows[:held]))


class CandidateModel:
    """The base model with one merged LoRA attached through forward hooks; ``set`` swaps it.

    For the exact weighted sum (``cat``/``linear`` of LoRAs, no truncation) ``stack`` attaches
    every input's factors once, side by side, and ``set_weights`` then only sets the weight of
    each input's rank columns: the hook adds ``((x A^T) * s) B^T``, which is ``sum_i w_i x
    (B_i A_i)^T``, the delta ``merge.cat`` builds, without merging or moving factors per
    candidate.

    Example:
        >>> with CandidateModel(model, modules) as candidate:            # doctest: +SKIP
        ...     candidate.set(merged); loss = evaluate(candidate.model)
    """

    def __init__(self, model: Any, modules: Sequence[str]) -> None:
        import torch

        self.model = model
        self._factors: dict[str, tuple[Any, Any]] = {}
        self._stacked: dict[str, tuple[Any, Any, tuple[tuple[int, int], ...]]] = {}
        """module -> (A of every input stacked, B side by side, (input, rank) per block)."""
        self._scales: dict[str, Any] = {}
        self._handles = []
        for name in modules:
            try:
                layer = model.get_submodule(name)
            except AttributeError:
                raise InvalidArgument(
                    f"module {name!r} of the adapters is not in the base model", module=name
                ) from None
            if not isinstance(layer, torch.nn.Linear) and type(layer).__name__ != "Conv1D":
                raise InvalidArgument(
                    f"module {name!r} is a {type(layer).__name__}: a search scores linear"
                    " layers (compose embedding adapters with `hub compose` directly)",
                    module=name,
                )
            self._handles.append(layer.register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Callable[..., Any]:
        def add_delta(module: Any, args: tuple[Any, ...], output: Any) -> Any:
            x = args[0]
            factors = self._factors.get(name)
            if factors is not None:
                a, b = factors
                return output + ((x.to(a.dtype) @ a.T) @ b.T).to(output.dtype)
            scale = self._scales.get(name)
            if scale is not None:
                a, b, _ = self._stacked[name]
                return output + (((x.to(a.dtype) @ a.T) * scale) @ b.T).to(output.dtype)
            return output

        return add_delta

    def set(self, modules: dict[str, ModuleLora]) -> None:
        """Attach one merged LoRA (per module), replacing what was attached."""
        device = next(self.model.parameters()).device
        self._scales = {}
        self._factors = {
            name: (lora.factors.A.to(device), lora.factors.B.to(device))
            for name, lora in modules.items()
        }

    def stack(self, adapters: Sequence[LoadedAdapter]) -> None:
        """Move every input's LoRA factors to the model's device once, stacked per module."""
        import torch

        from compose.operators import module_union

        device = next(self.model.parameters()).device
        self._stacked = {}
        for module, present in module_union(adapters).items():
            factors = [(i, a.modules[module].factors) for a, i in present]
            self._stacked[module] = (
                torch.cat([f.A for _, f in factors], dim=0).to(device),
                torch.cat([f.B for _, f in factors], dim=1).to(device),
                tuple((i, int(f.A.shape[0])) for i, f in factors),
            )

    def set_weights(self, weights_of: Callable[[str], Sequence[float]]) -> None:
        """Weight each stacked input of every module by ``weights_of(module)[input]``."""
        import torch

        self._factors = {}
        scales: dict[tuple[Any, ...], Any] = {}
        self._scales = {}
        for module, (a, _, blocks) in self._stacked.items():
            weights = weights_of(module)
            key = (tuple(weights), blocks)  # few distinct ones: one per layer group
            if key not in scales:
                column = [float(weights[i]) for i, rank in blocks for _ in range(rank)]
                scales[key] = torch.tensor(column, dtype=a.dtype).to(a.device)
            self._scales[module] = scales[key]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> CandidateModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Step:
    weights: list[float]
    """The full searched vector (with layer groups: group by group)."""
    loss: float
    """Eval loss on the search rows, without the L1 term."""
    objective: float


@dataclass
class SearchOutcome:
    weights: list[float]
    """One per input, or with ``layout`` N per group, group by group."""
    metric: str
    trace: list[Step]
    holdout: dict[str, Any]
    """``found``, ``uniform``, ``best_single`` (with its ``index``) losses, and per-example
    held-out scores of each (``scores``)."""
    seconds: float
    seconds_per_candidate: float
    details: dict[str, Any] = field(default_factory=dict)
    layout: list[list[int]] | None = None
    """The decoder layers of each group; None: one weight per input for every module."""

    @property
    def beats_baselines(self) -> bool:
        h = self.holdout
        return bool(h["found"] < h["uniform"] and h["found"] < h["best_single"])


def per_example_loss(candidate: Any, tokenizer: Any, data: EvalData, device: Any) -> list[float]:
    """One loss per example (lower is better) of ``candidate`` on ``data``."""
    from compose.evaluate import score

    metric = METRIC[data.kind]
    scores = score(candidate, tokenizer, data, [metric], device=device).scores[metric]
    return [s if metric == "cross_entropy" else -s for s in scores]


def run_search(
    model: Any,
    tokenizer: Any,
    adapters: Sequence[LoadedAdapter],
    inputs: Sequence[ComposeInput],
    operator: str,
    params: dict[str, Any],
    data: EvalData,
    settings: SearchSettings,
    device: Any,
    progress: Callable[[int, int, float], Any] | None = None,
    layout: list[list[int]] | None = None,
) -> SearchOutcome:
    """Search one weight per input (with ``layout``, per input and layer group) for
    ``operator`` on ``data``'s search rows, then score the result, the best single input and
    uniform weights on the held-out rows."""
    import cma

    from compose.layer_groups import ModuleWeights
    from compose.operators import merge_modules

    search_rows, held_out = split(data, settings)
    count = len(adapters)
    modules = sorted({m for a in adapters for m in a.modules})

    groups = 1 if layout is None else len(layout)

    def recipe_params(weights: Sequence[float]) -> dict[str, Any]:
        # N weights (the baselines, or no groups) merge as plain weights, as without groups.
        if layout is None or len(weights) == count:
            return {**params, "weights": list(weights)}
        given = {k: v for k, v in params.items() if k != "weights"}
        given["layer_groups"] = grouped(weights, layout)
        return given

    def merged(weights: Sequence[float]) -> dict[str, ModuleLora]:
        out, _ = merge_modules(adapters, inputs, operator, recipe_params(weights), str(device))
        return out

    def single(index: int) -> dict[str, ModuleLora]:
        one_hot = [1.0 if i == index else 0.0 for i in range(count)]
        out, _ = merge_modules(adapters, inputs, "cat", {"weights": one_hot}, str(device))
        return out

    uniform = [1.0 / count] * count
    low, high = settings.bounds
    trace: list[Step] = []
    started = time.perf_counter()
    with CandidateModel(model, modules) as candidate:

        def mean_loss(modules_: dict[str, ModuleLora], rows: EvalData) -> list[float]:
            candidate.set(modules_)
            return per_example_loss(candidate.model, tokenizer, rows, device)

        # The exact weighted sum is linear in the weights: its candidates only reweight the
        # inputs' factors, stacked once.
        weighted_sum = (
            operator in ("cat", "linear")
            and params.get("rank") is None
            and {a.method for a in adapters} == {"lora"}
        )
        # One real merge before any candidate: its shape checks, and the uniform baseline.
        uniform_merge = merged(uniform)
        if weighted_sum:
            candidate.stack(adapters)

        def search_loss(weights: list[float]) -> list[float]:
            if not weighted_sum:
                return mean_loss(merged(weights), search_rows)
            candidate.set_weights(ModuleWeights(recipe_params(weights)))
            return per_example_loss(candidate.model, tokenizer, search_rows, device)

        def objective(weights: Sequence[float]) -> float:
            clipped = [min(max(float(w), low), high) for w in weights]
            losses = search_loss(clipped)
            loss = math.fsum(losses) / len(losses)
            total = loss + settings.l1 * math.fsum(abs(w) for w in clipped) / groups
            trace.append(Step(clipped, loss, total))
            if progress:
                progress(len(trace), settings.budget, loss)
            return total

        start = [min(max(w, low), high) for w in uniform * groups]
        es = cma.CMAEvolutionStrategy(
            start,
            (high - low) / 4,
            {
                "bounds": [low, high],
                "seed": settings.seed + 1,  # cma reads 0 as "seed from the clock"
                "verbose": -9,
                "maxfevals": settings.budget,
                "tolfun": 0,
                "tolx": 1e-12,
            },
        )
        objective(start)  # the uniform start is the first candidate of the trace
        while len(trace) < settings.budget:
            asked = es.ask()
            asked = asked[: settings.budget - len(trace)]
            values = [objective(list(x)) for x in asked]
            if len(asked) < es.popsize:
                break
            es.tell(asked, values)
            if es.stop() and "maxfevals" not in es.stop():
                break
        search_seconds = time.perf_counter() - started
        best = min(trace, key=lambda s: s.objective)
        found_scores = mean_loss(merged(best.weights), held_out)
        uniform_scores = mean_loss(uniform_merge, held_out)
        singles = [mean_loss(single(i), held_out) for i in range(count)]
    mean = lambda xs: math.fsum(xs) / len(xs)  # noqa: E731
    best_index = min(range(count), key=lambda i: mean(singles[i]))
    holdout = {
        "rows": len(held_out.rows),
        "search_rows": len(search_rows.rows),
        "found": mean(found_scores),
        "uniform": mean(uniform_scores),
        "best_single": mean(singles[best_index]),
        "best_single_index": best_index,
        "singles": [mean(s) for s in singles],
        "scores": {
            "found": found_scores,
            "uniform": uniform_scores,
            "best_single": singles[best_index],
        },
    }
    return SearchOutcome(
        weights=best.weights,
        metric=METRIC[data.kind],
        trace=trace,
        holdout=holdout,
        seconds=search_seconds,
        seconds_per_candidate=search_seconds / len(trace),
        layout=layout,
    )
