"""The operator registry and the runner that turns input adapter folders into a result folder.

``OPERATORS`` is one literal dict (no registration by import side effect): each entry says
which recipe parameters the operator takes, which it requires, which adapter methods it
accepts, and where the method comes from.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from compose.layer_groups import ModuleWeights, describe_layers
from schemas.errors import IncompatibleAdapters, InvalidRecipe

if TYPE_CHECKING:
    from torch import Tensor

    from compose.adapter_io import LoadedAdapter, ModuleLora
    from compose.merge import Factors, Truncation
    from schemas.card import InspectedAdapter
    from schemas.recipe import Recipe

MERGEABLE = frozenset({"lora", "loha", "lokr"})


@dataclass(frozen=True)
class OperatorSpec:
    summary: str
    reference: str
    methods: frozenset[str]
    """Adapter methods the operator accepts as inputs."""
    params: frozenset[str] = frozenset()
    """Recipe fields it takes (besides inputs, weights and name)."""
    required: frozenset[str] = frozenset()
    layer_groups: bool = False
    """Whether a recipe may give per-layer-group weights (``compose.layer_groups``)."""


OPERATORS: dict[str, OperatorSpec] = {
    "cat": OperatorSpec(
        "exact weighted sum as one LoRA of rank sum(r_i)",
        "https://arxiv.org/abs/2212.04089",
        frozenset({"lora"}),
        layer_groups=True,
    ),
    "linear": OperatorSpec(
        "exact weighted sum of deltas; with --rank, its best rank-R approximation"
        " (IA3: weighted sum of the scaling offsets)",
        "https://arxiv.org/abs/2212.04089",
        frozenset({"lora", "loha", "lokr", "ia3"}),
        frozenset({"rank", "energy", "factor"}),
        layer_groups=True,
    ),
    "svd": OperatorSpec(
        "best rank-R approximation of the exact weighted delta, computed in low rank",
        "https://en.wikipedia.org/wiki/Low-rank_approximation",
        MERGEABLE,
        frozenset({"rank", "energy", "factor"}),
        frozenset({"rank"}),
        layer_groups=True,
    ),
    "ties": OperatorSpec(
        "TIES: trim to the top-density values, elect signs, disjoint mean; factored to rank R",
        "https://arxiv.org/abs/2306.01708",
        MERGEABLE,
        frozenset({"rank", "energy", "factor", "density", "majority_sign"}),
        frozenset({"density"}),
        layer_groups=True,
    ),
    "dare": OperatorSpec(
        "DARE: random drop with rescale, then a weighted sum or TIES; factored to rank R",
        "https://arxiv.org/abs/2311.03099",
        MERGEABLE,
        frozenset({"rank", "energy", "factor", "density", "seed", "variant", "majority_sign"}),
        frozenset({"density"}),
        layer_groups=True,
    ),
    "magnitude-prune": OperatorSpec(
        "keep each input's top-density values by magnitude, weighted sum; factored to rank R",
        "https://arxiv.org/abs/2306.01708",
        MERGEABLE,
        frozenset({"rank", "energy", "factor", "density"}),
        frozenset({"density"}),
        layer_groups=True,
    ),
    "stack": OperatorSpec(
        "adapters of any methods applied in order (deploy merges the mergeable ones in order)",
        "https://huggingface.co/docs/peft/developer_guides/model_merging",
        frozenset({"lora", "adalora", "ia3", "loha", "lokr", "oft", "boft", "vera",
                   "prompt_tuning", "prefix_tuning", "p_tuning"}),
    ),
    "average": OperatorSpec(
        "AdapterHub bottleneck adapters of one config averaged tensor by tensor through"
        " adapters' own average_adapter (weights as given, default 1/N)",
        "https://docs.adapterhub.ml/merging_adapters.html",
        frozenset({"bottleneck"}),
    ),
    "ensemble": OperatorSpec(
        "N prompt adapters run in one batch, log-probabilities averaged (or --average: one"
        " averaged prompt)",
        "https://arxiv.org/abs/2104.08691",
        frozenset({"prompt_tuning", "p_tuning"}),
        frozenset({"average"}),
    ),
}  # fmt: skip

_DEFAULTS = {"majority_sign": "total", "average": False}
DEFAULT_ENERGY = 0.95
LOW_ENERGY = 0.8
"""Below this overall retained energy a merge is flagged (a warning line and on the card)."""


@dataclass
class ComposeInput:
    """One input: its exact reference (``ns/name@<commit>``), its files and its card."""

    ref: str
    folder: Path
    card: InspectedAdapter


@dataclass
class ComposeResult:
    """What a composition produced, for the result's card."""

    params: dict[str, Any]
    """The operator's resolved parameters (defaults filled in), as recorded in the lineage."""
    details: dict[str, Any] = field(default_factory=dict)
    """Retained energy per module and overall for truncating operators."""


def resolve_params(recipe: Recipe) -> dict[str, Any]:
    """Check the recipe's parameters against its operator and fill in defaults.

    Raises:
        InvalidRecipe: a parameter the operator does not take, or a required one missing.
    """
    spec = OPERATORS[recipe.operator]
    given = (
        {
            name
            for name in ("rank", "energy", "factor", "density", "seed", "variant")
            if getattr(recipe, name) is not None
        }
        | ({"average"} if recipe.average else set())
        | ({"majority_sign"} if recipe.majority_sign != "total" else set())
    )
    for name in sorted(given - spec.params):
        raise InvalidRecipe(
            f"operator {recipe.operator!r} does not take {name!r}"
            f" (it takes: {', '.join(sorted(spec.params)) or 'no parameters'})",
            field=name,
        )
    for name in sorted(spec.required - given):
        raise InvalidRecipe(f"operator {recipe.operator!r} needs {name!r}", field=name)
    params: dict[str, Any] = {name: getattr(recipe, name) for name in sorted(spec.params)}
    for name, default in _DEFAULTS.items():
        if name in params and params[name] is None:
            params[name] = default
    if params.get("rank") == "auto" and params.get("energy") is None:
        params["energy"] = DEFAULT_ENERGY
    if "factor" in params and params["factor"] is None:
        params["factor"] = "randomized"
    if recipe.operator == "dare":
        params["seed"] = 0 if params["seed"] is None else params["seed"]
        params["variant"] = params["variant"] or "linear"
    if recipe.layer_groups is not None:
        if not spec.layer_groups:
            grouped = ", ".join(name for name, s in OPERATORS.items() if s.layer_groups)
            raise InvalidRecipe(
                f"operator {recipe.operator!r} does not take 'layer_groups' (per-layer-group"
                f" weights merge with: {grouped})",
                field="layer_groups",
            )
        # In place of "weights"; a recipe without groups records exactly what it did before.
        params["layer_groups"] = [group.model_dump() for group in recipe.layer_groups]
        return params
    # An average is the plain mean unless weights say otherwise; adapters takes them as given.
    uniform = 1.0 / len(recipe.inputs) if recipe.operator == "average" else 1.0
    params["weights"] = list(recipe.weights or [uniform] * len(recipe.inputs))
    return params


def check_inputs(operator: str, inputs: Sequence[ComposeInput]) -> None:
    """Same base model; every input of a method the operator accepts (AdapterHub adapters:
    ``stack``, and ``average`` of bottleneck adapters of one config, see
    ``compose.adapterhub``)."""
    spec = OPERATORS[operator]
    first = inputs[0]
    for item in inputs:
        if item.card.library == "adapters":
            if operator not in ("stack", "average"):
                raise IncompatibleAdapters(
                    f"{item.ref} is an AdapterHub {item.card.method} adapter: it composes only"
                    f" as a stack (adapters' own Stack block) or, a bottleneck, as an average"
                    f" (adapters' average_adapter); `{operator}` works on PEFT adapters' tensors",
                    adapter=item.ref,
                )
        elif operator == "average":
            raise IncompatibleAdapters(
                f"{item.ref} is a PEFT {item.card.method} adapter; `average` averages AdapterHub"
                " bottleneck adapters (adapters' average_adapter): merge PEFT adapters with"
                " `linear`, `svd` or `ties`",
                adapter=item.ref,
            )
        elif item.card.method not in spec.methods:
            what = f"{item.card.method} adapter"
            raise IncompatibleAdapters(
                f"{item.ref} is a {what}; `{operator}` takes"
                f" {', '.join(sorted(spec.methods))} adapters",
                adapter=item.ref,
            )
        if item.card.base_model != first.card.base_model:
            raise IncompatibleAdapters(
                f"{item.ref} was trained on base {item.card.base_model!r} but {first.ref} on"
                f" {first.card.base_model!r}; only adapters of one base model compose",
                adapter=item.ref,
                expected=first.card.base_model,
                got=item.card.base_model,
            )
    if operator == "average":
        _check_average(inputs)


def _check_average(inputs: Sequence[ComposeInput]) -> None:
    import json

    from compose.adapterhub import CONFIG, average_refusal

    configs = [(i.ref, json.loads((i.folder / CONFIG).read_text(encoding="utf-8"))) for i in inputs]
    why = average_refusal(configs)
    if why is not None:
        raise IncompatibleAdapters(why)


def run_merge(
    recipe: Recipe,
    inputs: Sequence[ComposeInput],
    params: dict[str, Any],
    dest: Path,
    device: str = "cpu",
) -> ComposeResult:
    """Run a merging operator (cat, linear, svd, ties, dare, magnitude-prune) into ``dest``.

    Tensors are read on the CPU; each module's factors move to ``device``, where its dense
    deltas (for the per-value operators) are formed, merged, factored and freed before the
    next module: peak memory is a few modules, not the adapters' dense size.
    """
    import torch

    from compose.adapter_io import load_adapter, write_ia3, write_lora

    operator = recipe.operator
    adapters = [load_adapter(i.folder, i.ref, i.card.method, operator) for i in inputs]
    dtypes = {a.dtype for a in adapters}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    readme = _readme(recipe, inputs, params)
    template = adapters[0].config
    methods = {a.method for a in adapters}

    if methods == {"ia3"} or "ia3" in methods:
        if methods != {"ia3"}:
            raise IncompatibleAdapters(
                f"`{operator}` cannot mix IA3 scaling vectors with additive adapters"
                f" ({', '.join(sorted(methods))})"
            )
        merged = _merge_ia3(adapters, ModuleWeights(params))
        write_ia3(dest, merged, template=template, dtype=dtype, readme=readme)
        return ComposeResult(params)

    out, truncations = merge_modules(adapters, inputs, operator, params, device)
    write_lora(dest, out, template=template, dtype=dtype, readme=readme)
    return ComposeResult(params, energy_details(truncations))


def merge_modules(
    adapters: Sequence[LoadedAdapter],
    inputs: Sequence[ComposeInput],
    operator: str,
    params: dict[str, Any],
    device: str = "cpu",
) -> tuple[dict[str, ModuleLora], dict[str, Truncation]]:
    """Every module of the merged LoRA (on the CPU), and the truncation of each that was
    truncated. Shapes are checked per module, naming the module and the adapter.

    Each module is merged with its own weights (``params["weights"]``, or with
    ``params["layer_groups"]`` those of its layer's group: ``compose.layer_groups``); every
    other step is the same for every module, so a module's result depends only on its weights.
    """
    import torch

    from compose import merge
    from compose.adapter_io import ModuleLora

    weights = ModuleWeights(params)
    methods = {a.method for a in adapters}
    rank_param = params.get("rank")
    energy = params.get("energy") if rank_param == "auto" else None
    method: Literal["randomized", "exact"] = params.get("factor") or "randomized"
    truncations: dict[str, Truncation] = {}
    out: dict[str, ModuleLora] = {}
    if methods == {"lora"} and operator in ("cat", "linear", "svd"):
        for module, present in module_union(adapters).items():
            shapes = [
                (a.modules[module].factors.B.shape[0], a.modules[module].factors.A.shape[1])
                for a, _ in present
            ]
            merge.check_same_shapes(shapes, module, [a.label for a, _ in present])
            factors = [_to(a.modules[module].factors, device) for a, _ in present]
            module_weights = weights(module)
            w = [module_weights[i] for _, i in present]
            embedding = present[0][0].modules[module].embedding
            if rank_param is None:
                out[module] = ModuleLora(_cpu(merge.cat(factors, w, module=module)), embedding)
            else:
                rank = None if rank_param == "auto" else int(rank_param)
                result = merge.svd_merge(factors, w, rank, energy=energy, module=module)
                truncations[module] = result
                out[module] = ModuleLora(_cpu(result.factors), embedding)
        return out, truncations
    if operator == "cat":
        raise IncompatibleAdapters("`cat` merges LoRA adapters only")
    embeddings = {m for a in adapters for m, lora in a.modules.items() if lora.embedding}
    default_rank = max(int(i.card.rank or 0) for i in inputs)
    generator = torch.Generator().manual_seed(int(params.get("seed") or 0))
    names = sorted({m for a in adapters for m in (*a.modules, *a.dense)})
    for module in names:
        having = [(a, s) for a in adapters if (s := _shape(a, module)) is not None]
        merge.check_same_shapes(
            [shape for _, shape in having], module, [a.label for a, _ in having]
        )
        shape = having[0][1]
        # An input without this module contributes a zero delta (and a zero vote in TIES).
        start = None
        if not any(module in a.dense for a in adapters):  # every input is a LoRA here
            factors = [_factors(a, module, shape, device) for a in adapters]
            # The result's column space lies mostly in the inputs': the factor's first sample.
            start = torch.cat([f.B.float() for f in factors], dim=1)
        if start is not None and operator in ("ties", "magnitude-prune") and device == "cpu":
            # Merged block by block from the factors: the dense path's values. On a GPU the
            # dense path's few large kernels are faster (one 70B layer on an H200: 0.216 s
            # dense vs 0.241 s blockwise, benchmarks/README.md); a CPU gains from the cache.
            dense = _factored_op(operator, factors, weights(module), params, module)
        else:
            per_input = [_dense(a, module, shape, device) for a in adapters]
            dense = _dense_op(operator, per_input, weights(module), params, generator, module)
            del per_input
        options: dict[str, Any] = {"method": method, "module": module, "start": start}
        if rank_param == "auto":
            result = merge.factor(dense, None, energy=energy, **options)
        else:
            rank = int(rank_param) if rank_param is not None else default_rank
            result = merge.factor(dense, min(rank, min(shape)), **options)
        del dense
        truncations[module] = result
        out[module] = ModuleLora(_cpu(result.factors), module in embeddings)
    return out, truncations


def _shape(adapter: LoadedAdapter, module: str) -> tuple[int, int] | None:
    if module in adapter.modules:
        f = adapter.modules[module].factors
        return (int(f.B.shape[0]), int(f.A.shape[1]))
    if module in adapter.dense:
        d, k = adapter.dense[module].shape
        return (int(d), int(k))
    return None


def _dense(adapter: LoadedAdapter, module: str, shape: tuple[int, int], device: str) -> Tensor:
    """One input's dense delta of ``module`` on ``device`` (zeros where it lacks it), fp32."""
    import torch

    from compose.blockwise import product

    if module in adapter.modules:
        return product(_to(adapter.modules[module].factors, device))
    if module in adapter.dense:
        return adapter.dense[module].to(device)
    return torch.zeros(shape, device=device)


def _factors(adapter: LoadedAdapter, module: str, shape: tuple[int, int], device: str) -> Factors:
    """One input's factors of ``module`` on ``device``; of rank 0 (a zero delta) where it lacks
    it."""
    import torch

    from compose.merge import Factors

    if module in adapter.modules:
        return _to(adapter.modules[module].factors, device)
    return Factors(
        A=torch.zeros(0, shape[1], device=device), B=torch.zeros(shape[0], 0, device=device)
    )


def _factored_op(
    operator: str,
    factors: list[Factors],
    weights: list[float],
    params: dict[str, Any],
    module: str,
) -> Tensor:
    from compose import blockwise

    if operator == "ties":
        return blockwise.ties(
            factors, weights, params["density"], params["majority_sign"], module=module
        )
    return blockwise.magnitude_prune(factors, weights, params["density"], module=module)


def _to(factors: Factors, device: str) -> Factors:
    from compose.merge import Factors

    return Factors(A=factors.A.to(device), B=factors.B.to(device))


def _cpu(factors: Factors) -> Factors:
    from compose.merge import Factors

    return Factors(A=factors.A.cpu(), B=factors.B.cpu())


def module_union(
    adapters: Sequence[LoadedAdapter],
) -> dict[str, list[tuple[LoadedAdapter, int]]]:
    modules: dict[str, list[tuple[LoadedAdapter, int]]] = {}
    for index, adapter in enumerate(adapters):
        for module in adapter.modules:
            modules.setdefault(module, []).append((adapter, index))
    return dict(sorted(modules.items()))


def _dense_op(
    operator: str,
    deltas: list[Tensor],
    weights: list[float],
    params: dict[str, Any],
    generator: Any,
    module: str,
) -> Tensor:
    from compose import merge

    if operator in ("linear", "svd"):
        return merge.task_arithmetic(deltas, weights, module=module)
    if operator == "ties":
        return merge.ties(
            deltas, weights, params["density"], params["majority_sign"], module=module
        )
    if operator == "magnitude-prune":
        return merge.magnitude_prune(deltas, weights, params["density"], module=module)
    return merge.dare(
        deltas,
        weights,
        params["density"],
        generator,
        params["variant"],
        params["majority_sign"],
        module=module,
    )


def _merge_ia3(adapters: list[LoadedAdapter], weights: ModuleWeights) -> dict[str, Tensor]:
    """IA3 vectors scale activations; a vector of ones is "no change". Task arithmetic on the
    offsets from one, ``1 + sum_i w_i (l_i - 1)``, so each adapter's effect adds up and a
    single adapter with weight 1 is reproduced exactly."""
    merged: dict[str, Tensor] = {}
    for index, adapter in enumerate(adapters):
        for module, vector in adapter.vectors.items():
            weight = weights(module)[index]
            if module in merged and merged[module].shape != vector.shape:
                raise IncompatibleAdapters(
                    f"module {module!r} has IA3 vectors of shapes {tuple(merged[module].shape)}"
                    f" and {tuple(vector.shape)} (in {adapter.label})",
                    module=module,
                )
            base = merged.get(module, vector.new_ones(vector.shape).double())
            merged[module] = base + weight * (vector.double() - 1)
    return {m: v.float() for m, v in merged.items()}


def energy_details(truncations: dict[str, Truncation]) -> dict[str, Any]:
    if not truncations:
        return {}
    total = sum(t.total for t in truncations.values())
    kept = sum(t.retained for t in truncations.values())
    retained = round(kept / total, 8) if total > 0 else 1.0
    details: dict[str, Any] = {
        "retained_energy": retained,
        "module_energy": {m: round(t.energy, 8) for m, t in truncations.items()},
        "module_rank": {m: t.factors.rank for m, t in truncations.items()},
        "factor_methods": dict(Counter(t.method for t in truncations.values())),
    }
    if retained < LOW_ENERGY:
        lowest = min(truncations, key=lambda m: truncations[m].energy)
        details["energy_warning"] = (
            f"the merge keeps {retained:.1%} of its squared Frobenius norm (lowest:"
            f" {lowest} {truncations[lowest].energy:.1%}); its behaviour may differ from the"
            " exact merge: raise --rank or use --rank auto --energy 0.95"
        )
    return details


def _readme(recipe: Recipe, inputs: Sequence[ComposeInput], params: dict[str, Any]) -> str:
    lines = [
        "---",
        f"description: {recipe.description or f'{recipe.operator} of {len(inputs)} adapters'}",
        "library_name: peft",
        "---",
        f"# {recipe.name}",
        "",
        f"Composed by `hub compose {recipe.operator}` from:",
        "",
        *_readme_inputs(inputs, params),
        "",
        "Parameters: "
        + ", ".join(f"{k}={v}" for k, v in params.items() if k not in ("weights", "layer_groups")),
        "",
        "`hub verify --rebuild` recomputes it from this recipe and checks it within the rounding"
        " bound of its dtype (a recomputation may differ in the last bit between CPUs and"
        " thread counts).",
        "",
    ]
    return "\n".join(lines)


def _readme_inputs(inputs: Sequence[ComposeInput], params: dict[str, Any]) -> list[str]:
    groups = params.get("layer_groups")
    if groups is None:
        return [
            f"- `{i.ref}` (weight {w:g})" for i, w in zip(inputs, params["weights"], strict=True)
        ]
    lines = [
        f"- `{item.ref}` (weights: "
        + ", ".join(f"{g['weights'][index]:g} in {describe_layers(g['layers'])}" for g in groups)
        + ")"
        for index, item in enumerate(inputs)
    ]
    return [*lines, "", "Modules outside the decoder layers take the last group's weights."]
