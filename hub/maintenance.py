"""Keeping a registry healthy: ``verify`` re-hashes what the index references, ``gc`` removes
what nothing references."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from hub.locks import file_lock
from hub.uploads import UPLOAD_GRACE, grace_start

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


def verify_store(registry: Registry) -> VerifyReport:
    """Re-hash every referenced blob; name the versions of missing or corrupted ones."""
    index, store = registry.index, registry.store
    report = VerifyReport(database=index.integrity_check())
    referenced = index.referenced_digests()
    bad: dict[str, str] = {}
    with file_lock(registry.lock_path, shared=True):
        for digest in sorted(referenced):
            report.blobs_checked += 1
            status = store.check(digest)
            if status is None:
                report.bytes_checked += store.path(digest).stat().st_size
            else:
                bad[digest] = status
        report.orphan_blobs = sum(1 for d in store.iter_digests() if d not in referenced)
    users = index.versions_using(set(bad))
    report.problems = [BlobProblem(d, s, users[d]) for d, s in sorted(bad.items())]
    return report


def collect_garbage(registry: Registry, *, upload_grace: timedelta = UPLOAD_GRACE) -> GcReport:
    """Delete unreferenced blobs and leftovers of interrupted writes, holding the store lock
    exclusively (pushes and commits hold it shared, so none is in flight meanwhile).

    Blobs uploaded to the server within ``upload_grace`` are kept for the commit that will
    reference them, and temp files a live writer holds are left alone (the rule is in
    hub/uploads.py)."""
    report = GcReport()
    with file_lock(registry.lock_path, shared=False):
        pending = registry.index.expire_uploads(before=grace_start(upload_grace))
        referenced = registry.index.referenced_digests()
        for digest in list(registry.store.iter_digests()):
            if digest in pending and digest not in referenced:
                report.uploads_kept += 1
            elif digest not in referenced:
                report.bytes_freed += registry.store.delete(digest)
                report.blobs_removed += 1
        report.bytes_freed += registry.store.clear_tmp()
    return report
