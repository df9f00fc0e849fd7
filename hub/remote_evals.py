"""``hub eval REF... --from URL``: evaluate a team hub's versions here, and keep the records.

Each version is pulled (sha256-checked, ``RemoteRegistry.pull``) into a scratch folder and
scored exactly like a local one (``hub.evals``: same base cache, same record). The record then
goes back to the server, on the exact version it scored, when the token may write that
namespace (its dataset and per-example results are uploaded with it). Otherwise it is kept in
the local registry, in ``remote_evals``, by the hub's URL and the version's repository and
commit, with its blobs (``gc`` keeps them), and the record's ``"remote"`` says why;
``hub show REF --from URL`` lists such records next to the server's.

Nothing is posted or kept before every version has been scored (``hub.eval_store``), so an
eval that fails part-way leaves the team hub as it was. The records then go one request each:
if a later one fails, its error names the records already posted.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.eval_store import Made, Sink, store_blobs
from hub.evals import evaluate
from schemas.errors import AuthError, HubError

if TYPE_CHECKING:
    from hub.eval_forgetting import Forgetting
    from hub.registry import Registry
    from hub.remote import RemoteRegistry
    from schemas.card import AdapterCard


class RemoteSink(Sink):
    """Versions of a team hub; records posted back, or kept here."""

    def __init__(self, registry: Registry, remote: RemoteRegistry) -> None:
        self.registry, self.remote = registry, remote

    def cards(self, refs: Sequence[str]) -> list[AdapterCard]:
        return [self.remote.show(ref) for ref in refs]

    def files(self, card: AdapterCard, folder: Path) -> Path:
        return self.remote.pull(card.ref, folder)

    def keep(self, made: Sequence[Made]) -> None:
        # Called once every adapter is scored, so a failed eval posts nothing. The protocol
        # takes one record per request: a later post that fails (not for want of write
        # scope, which keeps that record here) cannot take back the ones already posted,
        # so its error names them.
        posted: list[str] = []
        for one in made:
            try:
                self._keep_one(one)
            except HubError as error:
                if not posted:
                    raise
                raise type(error)(
                    f"{error} (already posted to {self.remote.url}: {', '.join(posted)})",
                    **error.context,
                ) from None
            if one.record["remote"]["posted"]:
                posted.append(f"{one.record['id']} on {one.card.ref}")

    def _keep_one(self, one: Made) -> None:
        record, forgetting = one.record, one.forgetting
        record["results_sha256"] = hashlib.sha256(one.per_example).hexdigest()
        blobs: list[tuple[str, Path | bytes]] = []
        if forgetting is not None:  # the general text and its per-document sums go too
            forgetting.summary["results_sha256"] = hashlib.sha256(
                forgetting.per_document
            ).hexdigest()
            blobs = [
                (forgetting.data.sha256, forgetting.data.path),
                (forgetting.summary["results_sha256"], forgetting.per_document),
            ]
        try:
            self.remote.post_eval(record, one.dataset, one.per_example, blobs=blobs)
        except AuthError as error:
            record["remote"] = {"url": self.remote.url, "posted": False, "reason": str(error)}
            keep_locally(
                self.registry, self.remote.url, one.card, record, one.dataset, one.per_example,
                forgetting,
            )  # fmt: skip
        else:
            record["remote"] = {"url": self.remote.url, "posted": True}


def keep_locally(
    registry: Registry,
    url: str,
    card: AdapterCard,
    record: dict[str, Any],
    dataset: Path,
    per_example: bytes,
    forgetting: Forgetting | None = None,
) -> None:
    """Store a record of the remote version ``card`` in the local registry (with the blobs
    of its ``forgetting``, which ``gc`` keeps while the record references them)."""
    with registry.store_lock(shared=True):
        store_blobs(registry, record, dataset, per_example)
        if forgetting is not None:
            forgetting.store(registry)
        registry.catalog.add_remote_eval(url, card.repo, card.commit, record)


def kept_records(registry: Registry, url: str, card: AdapterCard) -> list[dict[str, Any]]:
    """Records of the remote version ``card`` kept here (oldest first)."""
    return registry.catalog.remote_evals(url.rstrip("/"), card.repo, card.commit)


def evaluate_remote(
    registry: Registry,
    remote: RemoteRegistry,
    refs: Sequence[str],
    data: str | os.PathLike[str],
    **options: Any,
) -> list[dict[str, Any]]:
    """``hub.evals.evaluate`` of a team hub's versions; see the module doc for where the
    records go (each record's ``"remote"``: ``url``, ``posted`` and, if kept here, ``reason``).

    Raises:
        AuthError: the token may not read a version (nothing is scored or recorded).
    """
    return evaluate(registry, refs, data, sink=RemoteSink(registry, remote), **options)
