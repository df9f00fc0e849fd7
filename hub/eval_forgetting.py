"""``hub eval --forgetting TEXT_FILE``: the change in per-token cross-entropy on a general text.

The text file is a ``{"text": ...}`` JSONL (one document per row; ``compose.forgetting`` says
how long documents are windowed and how the interval is formed). The adapter is scored with
the model the eval already loaded; the base's losses are cached like its other scores
(``hub.eval_store.BaseCache``), so forgetting for ten adapters scores the base once.

The record's ``forgetting`` holds the value (adapter minus base, nats per token; lower is
better, positive means forgotten), its interval, both cross-entropies, the document and token
counts, the window, the text's digest (the file is stored as a blob so the eval can be re-run)
and the per-document sums as a JSONL blob (``results_sha256``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.errors import InvalidData

if TYPE_CHECKING:
    from compose.eval_data import EvalData
    from hub.eval_store import BaseCache
    from hub.registry import Registry


def read_general_text(path: Path) -> EvalData:
    """The ``--forgetting`` file, checked like ``--data``; it must hold ``{"text"}`` rows."""
    from compose.eval_data import read_eval_data

    data = read_eval_data(path)
    if data.kind != "text":
        raise InvalidData(
            f'--forgetting {path.name}: expects {{"text": ...}} rows of general text, got'
            f" {data.kind} rows",
            path=str(path),
        )
    return data


@dataclass
class Forgetting:
    """A measured forgetting result and the blobs it must store with the record."""

    summary: dict[str, Any]
    data: EvalData
    per_document: bytes

    def store(self, registry: Registry) -> None:
        """Store the text and the per-document sums (the caller holds the store lock)."""
        digest, _ = registry.store.put_file(self.data.path)
        if digest != self.data.sha256:
            raise InvalidData(f"{self.data.path}: changed while it was being evaluated")
        results, _ = registry.store.put_bytes(self.per_document)
        self.summary["results_sha256"] = results


def measure_forgetting(
    cache: BaseCache,
    model: Any,
    base_dir: Path,
    tokenizer: Any,
    data: EvalData,
    config: dict[str, Any],
    device: Any,
    label: str,
    progress: Callable[[str, int], Any] | None,
) -> Forgetting:
    """Score ``model`` (the adapter as evaluated) and the base on ``data``; pair them."""
    from compose.forgetting import (
        DocumentLosses,
        default_window,
        document_losses,
        forgetting,
        pair_rows,
    )
    from hub.evals import _base_identity, _versions, load_base_model

    window = default_window(model.config)

    def losses(scored: Any, name: str) -> DocumentLosses:
        bar = progress(f"{name} forgetting", len(data.rows)) if progress else None
        try:
            return document_losses(
                scored,
                tokenizer,
                data,
                window=window,
                batch_size=config["batch_size"],
                device=device,
            )
        finally:
            if bar:
                bar.update(len(data.rows))
                bar.close()

    adapter = losses(model, label)
    key_fields = {
        "purpose": "forgetting",
        "base": _base_identity(base_dir),
        "data": data.sha256,
        "rows": len(data.rows),
        "window": window,
        "dtype": config["dtype"],
        "device": str(device.type),
        "versions": _versions(),
    }

    def compute() -> dict[str, list[Any]]:
        got = losses(load_base_model(base_dir, config["dtype"], device), "base")
        return {"sums": got.sums, "tokens": got.tokens}

    cached = cache.get(key_fields, compute)
    base = DocumentLosses(sums=list(cached["sums"]), tokens=list(cached["tokens"]))
    summary = forgetting(adapter, base, seed=config["seed"])
    summary["window"] = window
    summary["dataset"] = {"sha256": data.sha256, "rows": len(data.rows), "name": data.path.name}
    rows = pair_rows(adapter, base)
    per_document = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    return Forgetting(summary=summary, data=data, per_document=per_document)
