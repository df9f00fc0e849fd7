"""Registry side of composition: resolve inputs, run the operator, store the result.

The operator reads its inputs through a folder of symlinks to the stored blobs (nothing is
copied), writes the result into a temporary folder, and the result is pushed like any
adapter (so it is inspected and indexed the same way) with its recipe and exact input commits
in the lineage. A failure at any step leaves the registry untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.errors import InvalidRecipe

if TYPE_CHECKING:
    from compose.operators import ComposeInput, ComposeResult
    from compose.reproduce import FileCheck
    from hub.registry import PushResult, Registry
    from schemas.recipe import Recipe


@contextlib.contextmanager
def _workspace(registry: Registry) -> Iterator[Path]:
    with registry.scratch("compose") as tmp:
        yield tmp


def _build(
    registry: Registry, recipe: Recipe, work: Path, device: str = "cpu"
) -> tuple[Path, ComposeResult, list[str]]:
    from compose.operators import run_merge

    params, inputs = resolve_inputs(registry, recipe, work)
    out = work / "result"
    if recipe.operator in ("stack", "ensemble"):
        result = _build_composite(recipe, inputs, params, out)
    elif recipe.operator == "average":
        from compose.adapterhub import average_adapterhub
        from compose.operators import ComposeResult

        # check_inputs made sure of one base; adapters builds its model from that base's config.
        base = str(inputs[0].card.base_model)
        average_adapterhub(base, [i.folder for i in inputs], params["weights"], out)
        result = ComposeResult(params)
    else:
        result = run_merge(recipe, inputs, params, out, device)
    return out, result, [i.ref for i in inputs]


def resolve_inputs(
    registry: Registry, recipe: Recipe, work: Path
) -> tuple[dict[str, Any], list[ComposeInput]]:
    """The recipe's resolved parameters, and its inputs as folders of links under ``work``
    (exact references, checked against the operator: methods and base model)."""
    from compose.operators import ComposeInput, check_inputs, resolve_params

    params = resolve_params(recipe)
    cards = [registry.show(ref) for ref in recipe.inputs]
    inputs: list[ComposeInput] = []
    for index, card in enumerate(cards):
        folder = work / f"input-{index}"
        registry.link_files(card, folder)
        inputs.append(ComposeInput(ref=card.ref, folder=folder, card=card))
    check_inputs(recipe.operator, inputs)
    return params, inputs


def _build_composite(
    recipe: Recipe, inputs: list[ComposeInput], params: dict[str, Any], out: Path
) -> ComposeResult:
    from compose.composites import CompositeMember, average_prompts, write_composite
    from compose.operators import ComposeResult

    members = [CompositeMember(ref=i.ref, folder=i.folder, card=i.card) for i in inputs]
    if recipe.operator == "ensemble" and params.get("average"):
        average_prompts(members, out)
    else:
        write_composite(out, "stack" if recipe.operator == "stack" else "ensemble", members)
    return ComposeResult(params)


def recipe_record(recipe: Recipe, params: dict[str, Any]) -> dict[str, Any]:
    """What a composite's card records: operator, resolved parameters, description."""
    return {"operator": recipe.operator, **params, "description": recipe.description}


def compose(
    registry: Registry,
    recipe: Recipe,
    device: str = "auto",
    *,
    search: dict[str, Any] | None = None,
) -> PushResult:
    """Run ``recipe`` and push the result as the next version of ``recipe.name``.

    ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``; where the merge runs
    (inputs are read and the result written on the CPU either way). ``search``: how
    ``hub compose search`` found the recipe's weights, recorded beside the recipe."""
    from compose.evaluate import device_for
    from compose.reproduce import TOLERANCE
    from schemas.card import Lineage

    where = str(device_for(device))
    with _workspace(registry) as work:
        out, result, exact_inputs = _build(registry, recipe, work, where)
        # The card says how `hub verify --rebuild` checks this result, and where it was built.
        details = {**result.details, "rebuild_check": TOLERANCE, "built_with": build_environment()}
        record = recipe_record(recipe, result.params)
        if search is not None:
            record["search"] = search
        return registry.push(
            out,
            name=recipe.name,
            tasks=recipe.tasks,
            lineage=Lineage(recipe=record, inputs=exact_inputs),
            details=details,
        )


@dataclass
class RebuildReport:
    """What ``hub verify --rebuild`` found, file by file (see ``compose.reproduce``)."""

    ref: str
    matches: bool
    differing: list[str] = field(default_factory=list)
    """Files that differ beyond the bound (or are missing/extra), sorted."""
    files: list[FileCheck] = field(default_factory=list)
    tolerance: str = ""
    """What was checked, in words (``compose.reproduce.TOLERANCE``)."""

    @property
    def identical(self) -> bool:
        """Every file is the same bytes (then the check was bit for bit)."""
        return all(f.status == "identical" for f in self.files)

    @property
    def max_relative(self) -> float:
        """Largest relative difference of any tensor or module delta, over all files."""
        return max((f.max_relative for f in self.files), default=0.0)

    @property
    def max_bound_fraction(self) -> float:
        """Largest ``difference / bound`` over all files (at most 1.0 when it matches)."""
        return max((f.max_bound_fraction for f in self.files), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "identical": self.identical,
            "max_relative": self.max_relative,
            "max_bound_fraction": self.max_bound_fraction,
        }


def rebuild(registry: Registry, ref: str) -> RebuildReport:
    """Recompute a composite from its recorded recipe and exact inputs, and compare it with
    the stored files: tensors within the rounding bound, other files byte for byte.

    Bytes are not the test because BLAS/LAPACK results differ in the last bit between CPUs,
    thread counts and MKL settings (``compose.reproduce`` says why and derives the bound).
    """
    from compose.operators import OPERATORS
    from compose.reproduce import TOLERANCE, compare_folders
    from schemas.recipe import Recipe

    card = registry.show(ref)
    lineage = card.lineage
    if lineage is None or not lineage.recipe:
        raise InvalidRecipe(
            f"{card.repo}@v{card.version} was not built by `hub compose`: nothing to rebuild",
            repo=card.repo,
        )
    record = dict(lineage.recipe)
    record.pop("search", None)  # how the weights were found; the weights are in the recipe
    if record["operator"] in OPERATORS and "factor" in OPERATORS[record["operator"]].params:
        # Composites from before the randomized range finder were factored exactly.
        record.setdefault("factor", "exact")
    recipe = Recipe(
        operator=record.pop("operator"),
        name=card.repo,
        inputs=list(lineage.inputs),
        weights=record.pop("weights", None),
        description=record.pop("description", None),
        **{k: v for k, v in record.items() if v is not None},
    )
    with _workspace(registry) as work:
        out, _, _ = _build(registry, recipe, work)
        stored = registry.link_files(card, work / "stored")
        files = compare_folders(stored, out)
    differing = [f.path for f in files if not f.ok]
    return RebuildReport(card.ref, not differing, differing, files, TOLERANCE)


def build_environment() -> dict[str, Any]:
    """Where a composite was computed, for its card: what a rebuild elsewhere may differ in."""
    import torch

    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
