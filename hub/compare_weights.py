"""``hub compare``'s weight-space half: each adapter's per-module updates, their similarity
and spectra (the math is ``compose.similarity``).

- LoRA: factors (scale folded into B), never a d x k product. LoHa, LoKr: their dense deltas.
- IA3, OFT, BOFT: their deltas depend on the base weight (``compose.base_deltas``: IA3's
  ``(l - 1) * W``, OFT's and BOFT's rotation through PEFT's own merge). The base is ``--base``
  or the card's ``base_model`` folder. Without it, OFT and BOFT are skipped with the reason, and
  IA3 falls back to its ``l - 1`` vectors: comparable with other IA3 vectors only, every pair
  with a weight delta noted as not comparable (the report still runs).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.errors import HubError, IncompatibleAdapters

if TYPE_CHECKING:
    from compose.similarity import Update
    from hub.registry import Registry
    from schemas.card import AdapterCard

_PLAIN = ("lora", "loha", "lokr")
"""Methods whose weight delta is the adapter's own (no base weight needed)."""


def updates(
    registry: Registry, cards: list[AdapterCard], base: str | None = None
) -> tuple[dict[str, dict[str, Update]], dict[str, str], dict[str, str]]:
    """module -> update for each adapter whose weights have a delta to compare.

    Returns:
        (updates by ref, why an adapter has none (skipped), notes on how an adapter was
        compared where it is not its full weight delta: IA3 vectors without the base).
    """
    from compose.adapter_io import load_adapter
    from compose.base_deltas import METHODS as BASE_METHODS
    from compose.base_deltas import base_deltas
    from compose.merge import Factors
    from compose.similarity import Dense

    found: dict[str, dict[str, Update]] = {}
    skipped: dict[str, str] = {}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="hub-compare-") as tmp:
        bases = _Bases(registry, base, Path(tmp))
        for i, card in enumerate(cards):
            if card.library == "adapters":
                skipped[card.ref] = _adapterhub_skip(card)
                continue
            if card.method not in (*_PLAIN, *BASE_METHODS):
                skipped[card.ref] = f"{card.method} has no weight delta to compare"
                continue
            folder = registry.link_files(card, Path(tmp) / str(i))
            try:
                loaded = load_adapter(folder, card.ref, card.method, "compare")
            except IncompatibleAdapters as err:
                skipped[card.ref] = str(err).replace("`compare` cannot merge it", "").strip("; ")
                continue
            modules: dict[str, Update] = {}
            for module, lora in loaded.modules.items():
                modules[module] = Factors(A=lora.factors.A, B=lora.factors.B)
            for module, delta in loaded.dense.items():
                modules[module] = Dense(delta)
            if card.method in BASE_METHODS:
                base_dir, why = bases.folder(card)
                if base_dir is None:
                    if card.method != "ia3":
                        skipped[card.ref] = (
                            f"{card.method} rotates the base weight, so its weight delta needs"
                            f" the base model, which is not available: {why}"
                        )
                        continue
                    notes[card.ref] = (
                        "IA3 compared through its (l - 1) vectors, with other IA3 adapters only:"
                        f" its weight delta (l - 1) * W needs the base model, which is not"
                        f" available: {why}"
                    )
                    for module, vector in loaded.vectors.items():
                        modules[module] = Dense(vector - 1.0, vector=True)
                else:
                    try:
                        deltas = base_deltas(folder, card.method, base_dir, card.ref)
                    except HubError as err:
                        skipped[card.ref] = str(err)
                        continue
                    modules.update({m: Dense(d) for m, d in deltas.items()})
            found[card.ref] = modules
    return found, skipped, notes


class _Bases:
    """Each card's base folder (``--base``, else the card's ``base_model``), resolved once per
    name, or why there is none."""

    def __init__(self, registry: Registry, base: str | None, scratch: Path) -> None:
        self.registry, self.base, self.scratch = registry, base, scratch
        self.known: dict[str, Path] = {}

    def folder(self, card: AdapterCard) -> tuple[Path | None, str]:
        from hub.evals import _base

        key = str(self.base if self.base is not None else card.base_model)
        if key not in self.known:
            try:
                folder, _ = _base(
                    self.registry, self.base, card, self.scratch / f"base-{len(self.known)}"
                )
            except HubError as err:
                return None, str(err)  # not kept: the message names this card
            self.known[key] = folder
        return self.known[key], ""


def _adapterhub_skip(card: AdapterCard) -> str:
    """Why an AdapterHub adapter has no weight-space similarity (its card and metrics are
    compared like any other's)."""
    if card.method in ("lora", "ia3"):
        return (
            f"AdapterHub {card.method}: weight-space similarity reads PEFT's tensors only"
            " (compared here by its card and metrics)"
        )
    why = " (a non-linearity sits between its projections)" if card.method == "bottleneck" else ""
    return f"AdapterHub {card.method}: no weight delta to compare{why}"


def similarity(
    cards: list[AdapterCard],
    found: dict[str, dict[str, Update]],
    skipped: dict[str, str],
    notes: dict[str, str],
) -> dict[str, Any]:
    """The report's ``similarity``: cosine and relative distance matrices (None where a pair
    is not compared), per-module cosines, principal angles and target overlap per pair, and
    why an adapter (``skipped``) or a pair (``not_comparable``) has none.

    Raises:
        IncompatibleAdapters: two adapters' updates of one module differ in shape (trained on
            different base layers).
    """
    from compose import similarity as sim

    refs = [c.ref for c in cards]
    n = len(refs)
    cosine: list[list[float | None]] = [[None] * n for _ in range(n)]
    distance: list[list[float | None]] = [[None] * n for _ in range(n)]
    per_module: dict[str, dict[str, float]] = {}
    angles: dict[str, dict[str, dict[str, list[float]]]] = {}
    overlap: dict[str, float] = {}
    not_comparable: dict[str, str] = {}
    for i, a in enumerate(refs):
        for j, b in enumerate(refs):
            if a not in found or b not in found or j < i:
                continue
            try:
                result = sim.compare(found[a], found[b])
            except sim.NotComparable as err:
                not_comparable[f"{a} | {b}"] = (
                    f"{err}; give --base DIR (the base model) to compare their weight deltas"
                )
                continue
            except ValueError as err:
                raise IncompatibleAdapters(f"{a} and {b}: {err}") from None
            cosine[i][j] = cosine[j][i] = result.cosine
            distance[i][j] = distance[j][i] = result.relative_distance
            if j > i:
                pair = f"{a} | {b}"
                per_module[pair] = {m: v["cosine"] for m, v in result.per_module.items()}
                overlap[pair] = result.target_overlap
                angles[pair] = {}
                for module in result.per_module:
                    pa = sim.principal_angles(found[a][module], found[b][module])
                    angles[pair][module] = {"columns": pa.columns, "rows": pa.rows}
    return {
        "refs": refs,
        "cosine": cosine,
        "relative_distance": distance,
        "per_module": per_module,
        "principal_angles": angles,
        "target_overlap": overlap,
        "skipped": skipped,
        "notes": notes,
        "not_comparable": not_comparable,
    }


def spectra(found: dict[str, dict[str, Update]]) -> dict[str, dict[str, Any]]:
    """Each adapter's per-module singular values and ranks (IA3 vectors have none)."""
    from compose import similarity as sim

    out: dict[str, dict[str, Any]] = {}
    for ref, modules in found.items():
        out[ref] = {}
        for module, update in sorted(modules.items()):
            if sim.is_vector(update):
                continue  # a scaling, not a weight delta: no spectrum
            spec = sim.spectrum(update)
            out[ref][module] = {
                "singular_values": spec.singular_values,
                "cumulative_energy": spec.cumulative_energy,
                "effective_rank": spec.effective_rank,
                "stable_rank": spec.stable_rank,
                "rank": spec.rank,
                "utilisation": spec.utilisation,
            }
    return out
