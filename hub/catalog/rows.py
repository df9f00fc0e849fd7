"""What every catalog backend derives from a card the same way: the rows of its metrics and
lineage, the stored JSON read back, and the time stamps it writes."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

from hub.catalog.base import TokenRow


def metric_rows(version_id: int, metrics: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The ``metrics`` table's rows for a card's metric list (``schemas.metrics`` rule)."""
    from schemas.metrics import higher_is_better_of, source_priority

    return [
        (
            version_id,
            m["name"],
            m["value"],
            m.get("dataset"),
            m.get("source") or "push",
            source_priority(m.get("source")),
            position,
            int(higher_is_better_of(m)),
        )
        for position, m in enumerate(metrics)
    ]


_COMMIT = re.compile(r"[0-9a-f]{40}")


def lineage_rows(version_id: int, card: dict[str, Any]) -> list[tuple[int, str, str]]:
    """``(version_id, commit, kind)`` for each exact reference in the card's lineage: its
    composite ``input``s and its training ``parent`` (both ``ns/name@<40-hex commit>``)."""
    lineage = card.get("lineage") or {}
    refs = [(ref, "input") for ref in lineage.get("inputs") or []]
    refs += [(ref, "parent") for ref in {card.get("parent"), lineage.get("parent")} if ref]
    rows = []
    for ref, kind in refs:
        commit = str(ref).rpartition("@")[2]
        if _COMMIT.fullmatch(commit):
            rows.append((version_id, commit, kind))
    return rows


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def load_card(text: str) -> dict[str, Any]:
    """A stored card's JSON, read so that a non-finite number written by an older version
    (``Infinity``, ``NaN``: not JSON) never reaches a reader: such a metric is dropped, any
    other such field becomes null."""
    card: dict[str, Any] = json.loads(text, parse_constant=_non_finite)
    if "Infinity" in text or "NaN" in text:
        card = _drop_non_finite(card)
    return card


class _NonFinite:
    pass


def _non_finite(_: str) -> _NonFinite:
    return _NonFinite()


def _drop_non_finite(value: Any) -> Any:
    if isinstance(value, dict):
        if "metrics" in value and isinstance(value["metrics"], list):
            value["metrics"] = [
                m
                for m in value["metrics"]
                if not (isinstance(m, dict) and isinstance(m.get("value"), _NonFinite))
            ]
        return {k: _drop_non_finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_drop_non_finite(v) for v in value]
    return None if isinstance(value, _NonFinite) else value


def card_json(text: str) -> str:
    """A stored card's JSON text as it may be printed: passed through unless it holds a
    non-finite number (see ``load_card``)."""
    if "Infinity" in text or "NaN" in text:
        return json.dumps(load_card(text))
    return text


def forgetting_digests(record: dict[str, Any]) -> tuple[str | None, str | None]:
    """The blobs an eval record's ``--forgetting`` result keeps (its text, its per-document
    sums): ``(dataset sha256, results sha256)``, None where absent."""
    forgetting = record.get("forgetting") or {}
    if not isinstance(forgetting, dict):
        return None, None
    dataset = forgetting.get("dataset") or {}
    return (dataset.get("sha256") if isinstance(dataset, dict) else None), forgetting.get(
        "results_sha256"
    )


TOKEN_COLUMNS = "id, name, hash, read, write, created_at, revoked_at"
"""The ``tokens`` table's columns, in the order ``token_row`` reads them."""


def token_row(row: Any) -> TokenRow:
    """A ``TokenRow`` from a ``SELECT TOKEN_COLUMNS`` row (scopes stored as JSON lists)."""
    return TokenRow(
        row[0], row[1], row[2], tuple(json.loads(row[3])), tuple(json.loads(row[4])),
        row[5], row[6],
    )  # fmt: skip
