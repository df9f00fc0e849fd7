"""Keeping a registry healthy: ``verify`` re-hashes what the index references, ``gc`` removes
what nothing references."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from compose.staging import sweep_work
from hub.uploads import UPLOAD_GRACE, grace_start
from schemas.errors import IndexDamaged

if TYPE_CHECKING:
    from hub.registry import Registry


@dataclass
class BlobProblem:
    digest: str
    status: str  # "missing" | "corrupted"
    versions: list[str]
    """``ns/name@v3 (path)`` of every version that uses the blob."""


@dataclass
class VerifyReport:
    blobs_checked: int = 0
    bytes_checked: int = 0
    problems: list[BlobProblem] = field(default_factory=list)
    orphan_blobs: int = 0
    """Unreferenced blobs `hub gc` would remove."""
    pending_uploads: int = 0
    """Unreferenced blobs uploaded within the grace period: kept by `hub gc` for their commit."""
    database: str = "ok"

    @property
    def healthy(self) -> bool:
        return not self.problems and self.database == "ok"


@dataclass
class GcReport:
    blobs_removed: int = 0
    bytes_freed: int = 0
    uploads_kept: int = 0
    """Blobs uploaded to `hub serve` within the grace period, kept for their commit."""
    scratch_removed: int = 0
    """Scratch folders under ``tmp/`` that killed composes, exports and loads left behind."""


def verify_store(registry: Registry, *, upload_grace: timedelta = UPLOAD_GRACE) -> VerifyReport:
    """Re-hash every referenced blob; name the versions of missing or corrupted ones.

    A damaged index (missing next to a non-empty store, truncated, not a database) is reported
    in ``database``, not raised: the report is then unhealthy and checks no blob.
    """
    store = registry.store
    try:
        catalog = registry.catalog
        report = VerifyReport(database=catalog.integrity_check())
        referenced = catalog.referenced_digests()
        pending = catalog.pending_uploads(since=grace_start(upload_grace))
    except IndexDamaged as error:
        return VerifyReport(database=str(error))
    bad: dict[str, str] = {}
    with registry.store_lock(shared=True):
        for digest in sorted(referenced):
            report.blobs_checked += 1
            status = store.check(digest)
            if status is None:
                report.bytes_checked += store.size(digest)
            else:
                bad[digest] = status
        for digest in store.iter_digests():
            if digest in referenced:
                continue
            if digest in pending:
                report.pending_uploads += 1
            else:
                report.orphan_blobs += 1
    users = catalog.versions_using(set(bad))
    report.problems = [BlobProblem(d, s, users[d]) for d, s in sorted(bad.items())]
    return report


def collect_garbage(registry: Registry, *, upload_grace: timedelta = UPLOAD_GRACE) -> GcReport:
    """Delete unreferenced blobs and leftovers of interrupted writes, holding the store lock
    exclusively (pushes and commits hold it shared, so none is in flight meanwhile), and the
    scratch folders of killed processes (``compose.staging.sweep_work``: unlocked and over a
    minute old). A lost or damaged index raises ``IndexDamaged`` before anything is deleted.

    Blobs uploaded to the server within ``upload_grace`` are kept for the commit that will
    reference them, and temp files a live writer holds are left alone (the rule is in
    hub/uploads.py)."""
    report = GcReport()
    with registry.store_lock(shared=False):
        pending = registry.catalog.expire_uploads(before=grace_start(upload_grace))
        referenced = registry.catalog.referenced_digests()
        for digest in list(registry.store.iter_digests()):
            if digest in pending and digest not in referenced:
                report.uploads_kept += 1
            elif digest not in referenced:
                report.bytes_freed += registry.store.delete(digest)
                report.blobs_removed += 1
        report.bytes_freed += registry.store.clear_tmp()
    report.scratch_removed = sweep_work(registry.home / "tmp")
    return report
