"""Pending uploads: what keeps ``hub gc`` off a push that is under way, and keeps it private.

A push to ``hub serve`` comes in two steps: the client uploads blobs (``PUT /blobs/{sha256}``,
a Git LFS upload, or a file inline in a Hugging Face commit), then commits a version listing
them. In between, no version references those blobs, and ``gc`` deletes unreferenced blobs.
The rule that makes the two safe to run at the same time:

1. **In flight.** A blob being received is written to the store's ``tmp/`` with an ``flock``
   on that temp file, held by its writer until the blob is published. ``gc`` removes only the
   temp files it can lock itself: those whose writer is gone (crashed, killed, hung up).
2. **Received.** Publishing the blob and recording ``(token, sha256, time)`` in the index's
   ``uploads`` table happen while the store lock is held shared.
3. **Committed.** A commit holds the store lock shared from the check that every file it
   lists is stored (and usable by its token) until the version is in the index. A listed file
   that is missing, or that the push would not store, refuses the whole commit: a version
   never has fewer files than the client sent.
4. **Collected.** ``gc`` holds the store lock exclusively. It drops upload records older than
   ``UPLOAD_GRACE``, then deletes a blob only if no version references it and no remaining
   upload record names it. An upload whose commit comes later than that is refused at the
   commit with "blobs not uploaded yet" and is simply sent again.
5. **Access.** A blob no version references is readable, and usable in a commit, only by the
   token that uploaded it (within the grace). After ``hub rm``, other tokens see it as absent.

The store lock is the catalog's (``Registry.store_lock``, ``hub.catalog.coordination``): an
``flock`` on ``home/locks/store.lock`` for the embedded index, a PostgreSQL advisory lock
for a team database (``pg_advisory_lock_shared`` for 2 and 3, ``pg_advisory_lock`` for 4), so
it binds every worker of every host. The ``uploads`` table lives in the catalog too, and
in-flight uploads to an object store are S3 multipart uploads, which ``gc`` aborts only once
they are older than ``UPLOAD_GRACE``. Nothing of it is kept in a worker's memory.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

UPLOAD_GRACE = timedelta(hours=24)
"""How long an uploaded blob waits for the commit that references it."""


def grace_start(grace: timedelta = UPLOAD_GRACE) -> str:
    """The oldest upload time (ISO, as the index stores it) still within ``grace``."""
    return (datetime.now(timezone.utc) - grace).isoformat(timespec="microseconds")
