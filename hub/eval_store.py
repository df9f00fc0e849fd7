"""Where ``hub eval``'s results go: records, the blobs they reference, the base's cached scores.

An eval of several adapters is recorded whole or not at all. Nothing is written while it runs:
each adapter's record waits as a ``Made`` (with its dataset, per-example results and
forgetting blobs), and the base's new scores wait in a ``BaseCache``; only when every adapter
has been scored are the cache and then all the records stored, the local records in one
catalog transaction (``Catalog.add_evals``). A failure part-way (an adapter that does not fit,
a row that cannot be scored) leaves the registry, the store and the cache as they were.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.errors import InvalidData, RevisionNotFound

if TYPE_CHECKING:
    from hub.eval_forgetting import Forgetting
    from hub.registry import Registry
    from schemas.card import AdapterCard


@dataclass
class Made:
    """A record an eval made, waiting to be stored with what it references."""

    card: AdapterCard
    record: dict[str, Any]
    dataset: Path
    per_example: bytes
    """The per-example results, JSONL."""
    forgetting: Forgetting | None = None


class BaseCache:
    """The base model's scores, cached in the registry by base, data digest and the config
    that changes scores, so evaluating ten adapters against one base scores it once.

    Scores computed during this eval are held here (and reused by its later adapters) until
    ``flush``, which the eval calls once every adapter has succeeded.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.pending: dict[str, bytes] = {}

    def get(self, key_fields: dict[str, Any], compute: Callable[[], Any]) -> Any:
        """``compute()``'s JSON result for the base under ``key_fields`` (base identity, data
        digest, scoring config, package versions): cached, pending, or computed now."""
        key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()
        if key in self.pending:
            return json.loads(self.pending[key])
        digest = self.registry.catalog.base_scores(key)
        if digest is not None and self.registry.store.has(digest):
            return json.loads(self.registry.store.read_bytes(digest))
        scores = compute()
        self.pending[key] = json.dumps(scores, sort_keys=True).encode()
        return scores

    def flush(self) -> None:
        """Store the scores computed since the last flush."""
        if not self.pending:
            return
        with self.registry.store_lock(shared=True):
            for key, payload in self.pending.items():
                digest, _ = self.registry.store.put_bytes(payload)
                self.registry.catalog.set_base_scores(key, digest)
        self.pending.clear()


class Sink(abc.ABC):
    """Where ``evaluate`` finds the adapters and keeps the records it makes."""

    @abc.abstractmethod
    def cards(self, refs: Sequence[str]) -> list[AdapterCard]:
        """The cards of ``refs``, in order."""

    @abc.abstractmethod
    def files(self, card: AdapterCard, folder: Path) -> Path:
        """Lay out ``card``'s files in ``folder`` (read-only use)."""

    @abc.abstractmethod
    def keep(self, made: Sequence[Made]) -> None:
        """Store every record of ``made`` with its dataset file, per-example results and
        forgetting blobs, setting each ``record["results_sha256"]``: all of them, or (where
        the backend allows) none."""


class LocalSink(Sink):
    """Versions of the local registry; records on them."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def cards(self, refs: Sequence[str]) -> list[AdapterCard]:
        return [self.registry.show(ref) for ref in refs]

    def files(self, card: AdapterCard, folder: Path) -> Path:
        return self.registry.link_files(card, folder)

    def keep(self, made: Sequence[Made]) -> None:
        store_records(self.registry, made)


def store_blobs(
    registry: Registry, record: dict[str, Any], dataset: Path, per_example: bytes
) -> str:
    """Store the dataset file (checked against the record's digest) and the per-example
    results in the local store; returns the results' digest. Hold the store lock shared."""
    data_digest, _ = registry.store.put_file(dataset)
    if data_digest != record["dataset"]["sha256"]:
        raise InvalidData(f"{dataset}: changed while it was being evaluated")
    digest, _ = registry.store.put_bytes(per_example)
    return digest


def record_metrics(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The card ``metrics`` entries of ``record`` (one per metric, with its eval id)."""
    dataset_name = record["dataset"].get("name")
    return [
        {
            "name": name,
            "value": summary["value"],
            "dataset": dataset_name,
            "source": record["source"],
            "n": summary.get("n"),
            "stderr": summary.get("stderr"),
            "ci95": summary.get("ci95"),
            "higher_is_better": summary.get("higher_is_better"),
            "eval_id": record["id"],
        }
        for name, summary in record["metrics"].items()
    ]


def store_records(registry: Registry, made: Sequence[Made]) -> None:
    """Store the blobs of every record of ``made``, then the records and their card metrics
    in one transaction: all of them, or none (a version removed meanwhile)."""
    with registry.store_lock(shared=True):
        for one in made:
            one.record["results_sha256"] = store_blobs(
                registry, one.record, one.dataset, one.per_example
            )
            if one.forgetting:
                one.forgetting.store(registry)
        gone = registry.catalog.add_evals(
            [(m.card.repo, m.card.commit, m.record, record_metrics(m.record)) for m in made]
        )
    if gone is not None:
        raise RevisionNotFound(
            f"{gone} was removed while it was being evaluated (nothing was recorded)",
            repo=gone.partition("@")[0],
        )


def store_record(registry: Registry, card: AdapterCard, record: dict[str, Any]) -> None:
    """Attach ``record`` to ``card``'s version and add its metrics to the card, in one
    transaction (the caller holds the store lock shared if the record references blobs)."""
    if not registry.catalog.add_eval(card.repo, card.commit, record, record_metrics(record)):
        raise RevisionNotFound(
            f"{card.ref} was removed while it was being evaluated", repo=card.repo
        )
