"""Catalog migration 6: the parameter ledger for versions pushed before it existed.

Each such version's files are copied out of the blob store into a scratch folder and
inspected again (``hub.inspect``), and the ledger fields of the fresh card are written into
the stored one; nothing else of the card changes (its ``params_base`` included: the base
folder it was counted from may be gone). Base folders are not read (``base_dirs=()``): the
migration runs wherever the index is opened, a server's included, and must not read paths an
uploaded config names; counts that need the base's weight shapes stay unknown, with the
reason, until the version is pushed again with the base readable.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.card import LEDGER
from schemas.errors import HubError

if TYPE_CHECKING:
    from hub.blobstore import BlobStore

LEDGER_KEYS = (
    *LEDGER,
    *(f"{name}_fraction" for name in LEDGER),
    "params_stored_by_dtype",
    "params_stored_frozen",
    "params_unknown",
    "params_notes",
)
"""The card keys the ledger adds (``params_base`` / ``params_fraction`` predate it)."""


def has_ledger(card: dict[str, Any]) -> bool:
    return all(key in card for key in LEDGER_KEYS)


def recompute_ledgers(
    versions: Iterable[tuple[int, str, dict[str, Any]]],
    files: Callable[[int], list[tuple[str, str]]],
    store: BlobStore,
) -> list[tuple[int, dict[str, Any]]]:
    """The cards, with the ledger filled in, of the versions whose stored card lacks it.

    ``versions`` are ``(version_id, commit, card)`` oldest first, ``files(version_id)`` a
    version's ``(path, sha256)`` sorted by path; the catalog's migration writes the cards
    back in its transaction. A version whose files cannot be read back (a blob missing or
    damaged) keeps ``params_stored`` (its old ``params_trainable``) and gets the other counts
    as None, with ``hub verify``'s finding as the reason.
    """
    cards: dict[str, dict[str, Any]] = {}  # commit -> card, for merge results' inputs
    updated = []
    for version_id, commit, card in versions:
        if not has_ledger(card):
            card.update(_ledger(card, files(version_id), store, cards))
            updated.append((version_id, card))
        cards[commit] = card
    return updated


def _ledger(
    card: dict[str, Any],
    files: list[tuple[str, str]],
    store: BlobStore,
    cards: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    from hub.inspect import inspect_adapter
    from hub.inspect.ledger import fractions, inputs_trained

    stored = card.get("params_stored", card.get("params_trainable"))
    try:
        with tempfile.TemporaryDirectory(prefix="hub-ledger-") as scratch:
            folder = Path(scratch)
            for path, digest in files:
                dest = folder / path
                dest.parent.mkdir(parents=True, exist_ok=True)
                store.copy_out(digest, dest, description=f"ledger {path}")
            fresh = inspect_adapter(
                folder,
                allow_nonfinite=True,  # accepted at its push; the flag is not recorded
                base_dirs=(),
                optimizer=(card.get("tags") or {}).get("optimizer"),
            ).model_dump()
    except (HubError, OSError, ValueError) as error:
        reason = f"not recomputed from the stored files: {error}"
        values: dict[str, int | None] = {name: None for name in LEDGER}
        values["params_stored"] = stored
        return {
            **values,
            **fractions(values, card.get("params_base")),
            "params_stored_by_dtype": {},
            "params_stored_frozen": 0,
            "params_unknown": {name: reason for name in LEDGER if name != "params_stored"},
            "params_notes": {},
        }
    out = {key: fresh[key] for key in LEDGER_KEYS}
    counts: dict[str, int | None] = {name: out[name] for name in LEDGER}
    out.update(fractions(counts, card.get("params_base")))
    lineage = card.get("lineage") or {}
    if lineage.get("inputs") and card.get("method") != "composite":
        inputs = [cards.get(ref.rpartition("@")[2]) or {} for ref in lineage["inputs"]]
        operator = str((lineage.get("recipe") or {}).get("operator") or "merge")
        merged = inputs_trained({**out, "params_base": card.get("params_base")}, inputs, operator)
        out = {key: merged[key] for key in out}
    out.pop("params_base", None)
    return out


def refresh_ledger(card: dict[str, Any], inspected: dict[str, Any]) -> None:
    """Pushing a version's files again refreshes its ledger from the new inspection (a tag
    ``optimizer=lorafa`` given now, the base folder readable now), in place; ``params_base``
    stays the stored one when the new push cannot count the base."""
    from hub.inspect.ledger import fractions

    card.update({key: inspected[key] for key in LEDGER_KEYS})
    base = inspected.get("params_base") or card.get("params_base")
    card.update(fractions({name: card[name] for name in LEDGER}, base))
