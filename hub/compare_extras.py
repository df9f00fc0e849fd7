"""``hub compare``'s evaluation columns beyond metrics: forgetting and inference overhead from
eval records, and output-space similarity measured on ``--data``.

- ``eval_columns(records)``: the newest forgetting result and the newest cost's overhead per
  mode (``unmerged``, ``merged``, ``stack``, ``ensemble``) against the base.
- ``output_similarity(...)``: every adapter (any method, prompts and composites included) and
  the base run over the data's scored positions; mean per-token KL and top-1 agreement of
  every pair (``compose.output_similarity``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.errors import IncompatibleAdapters

if TYPE_CHECKING:
    from hub.registry import Registry
    from schemas.card import AdapterCard

MAX_POSITIONS = 4096
"""Scored positions kept per model for output similarity (a cap on the scratch files)."""


def eval_columns(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{"forgetting": {...} | None, "cost": {MODE: {"prefill", "decode",
    "above_base_bytes"}} | None}`` from the newest records that have them."""
    forgetting = cost = None
    for record in records:  # oldest first: later ones win
        if record.get("forgetting"):
            forgetting = {**record["forgetting"], "eval_id": record["id"]}
        if record.get("cost"):
            cost = {
                mode: {
                    **(entry.get("overhead") or {}),
                    "above_base_bytes": entry["above_base_bytes"],
                }
                for mode, entry in record["cost"]["modes"].items()
                if mode != "base"
            }
            cost["eval_id"] = record["id"]
    return {"forgetting": forgetting, "cost": cost}


def output_similarity(
    registry: Registry,
    cards: Sequence[AdapterCard],
    data: str | Path,
    *,
    base: str | None = None,
    device: str = "auto",
    dtype: str = "fp32",
    batch_size: int = 8,
    limit: int | None = None,
    max_positions: int = MAX_POSITIONS,
) -> dict[str, Any]:
    """Output-space similarity of ``cards`` on ``data`` (the shape ``hub compare --json`` prints
    under ``"output_similarity"``).

    Raises:
        InvalidData (the file), InvalidArgument (the base), IncompatibleAdapters (adapters
        of different bases, or one that does not fit it).
    """
    from compose.composites import language_model, load_composed
    from compose.eval_data import read_eval_data
    from compose.evaluate import data_spans, device_for, pad_token
    from compose.output_similarity import similarity_matrices, write_distributions
    from hub.evals import _base, _tokenizer, load_base_model

    dataset = read_eval_data(Path(data), limit=limit)
    torch_device = device_for(device)
    with tempfile.TemporaryDirectory(prefix="hub-compare-outputs-") as tmp:
        root = Path(tmp)
        bases = [_base(registry, base, card, root / f"base-{i}") for i, card in enumerate(cards)]
        folders = {str(folder.resolve()) for folder, _ in bases}
        if len(folders) > 1:
            raise IncompatibleAdapters(
                "output similarity needs one base for all adapters; these use "
                + ", ".join(sorted({label for _, label in bases}))
                + " (give --base)"
            )
        base_dir, base_label = bases[0]
        tokenizer = _tokenizer(base_dir)
        spans = data_spans(tokenizer, dataset)
        common: dict[str, Any] = dict(
            max_positions=max_positions,
            batch_size=batch_size,
            device=torch_device,
            pad_id=pad_token(tokenizer),
        )
        reference = write_distributions(
            load_base_model(base_dir, dtype, torch_device), spans, root / "base.f32", **common
        )
        written = []
        for i, card in enumerate(cards):
            folder = registry.link_files(card, root / f"adapter-{i}")
            try:
                model = language_model(
                    load_composed(load_base_model(base_dir, dtype, torch_device), folder)
                )
            except (RuntimeError, ValueError, KeyError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
                raise IncompatibleAdapters(
                    f"{card.ref} does not fit the base {base_label}: {first}", adapter=card.ref
                ) from None
            written.append(write_distributions(model, spans, root / f"{i}.f32", **common))
            del model
        matrices = similarity_matrices(written, reference)
    return {
        "refs": [c.ref for c in cards],
        "dataset": {"sha256": dataset.sha256, "rows": len(dataset.rows), "name": dataset.path.name},
        "positions": reference.positions,
        "base": base_label,
        **matrices,
    }
