"""``hub migrate``: move a whole registry, losslessly, into an empty one elsewhere (an
embedded registry onto the team hub's PostgreSQL + object store, or back to a folder).

What is moved: every repository (with its version counter: a removed number is never
reused on the target either), every version with the same commit id, number, created time,
card, files and lineage; aliases; tokens (their stored hashes and scopes: a token that worked
on the source works on the target); eval records with their dataset and per-example blobs,
cached base scores and records kept of remote versions; every blob any of these references.
Pending server uploads are not (stop the source's workers first; see ``hub.catalog.snapshot``).

The target, ``--to``, is written as::

    TARGET    := FOLDER | DB_URL "," STORE_URL
    FOLDER    := a path without "://": an embedded registry (index.db + store/) is made there;
                 the folder may be missing, empty, or hold an empty registry
    DB_URL    := postgresql://USER[:PASSWORD]@HOST[:PORT]/DB   (postgres:// too)
    STORE_URL := any URL --store takes (s3://BUCKET[/PREFIX], file:///ABSOLUTE/DIR)

The two URLs are split at the first comma followed by ``SCHEME://``, so a comma inside the
database URL (several hosts) is fine.

The order of the work is what makes it safe:

1. Everything is checked before anything is written: ``--to`` itself; the source catalog
   (sound, read as one consistent snapshot) and the presence and size of every blob it
   references; then the target, which must hold no repository, token or eval record. A team
   database without the hub's schema gets it here (the same advisory-locked migrations as
   ``hub db upgrade``: one operator command, run once, never a worker at start).
2. Blobs are streamed from store to store, each re-hashed on the way and published under its
   sha256 only if it matches; blobs the target store holds already are not copied again.
3. The catalog is written in one transaction, read back and compared with the source before
   it commits.

The source is never written (an embedded index of an older schema is upgraded in place when
it is opened, as by every command). A failure before step 3 commits (a damaged blob found while
copying, the network, a full disk, a kill) leaves the target's catalog as it was; blobs
copied before it stay in the target store, unreferenced: running the same ``hub migrate``
again resumes (they are not copied twice), and ``hub gc`` on the target removes them if you
give up. Nothing is ever half visible: the target is either empty or the whole registry.

Example:
    >>> from hub import Registry                                              # doctest: +SKIP
    >>> report = migrate(Registry("~/.local/share/hub"),
    ...                  "postgresql://hub@db.internal/hub,s3://team-hub/blobs")  # doctest: +SKIP
    >>> report.versions, report.blobs_copied                                  # doctest: +SKIP
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hub.blobstore.base import CHUNK
from hub.catalog.snapshot import not_empty
from hub.progress import byte_progress
from schemas.errors import HubError, IndexDamaged, InvalidArgument, StoreCorrupted

if TYPE_CHECKING:
    from hub.blobstore import BlobStore
    from hub.catalog.snapshot import Snapshot
    from hub.registry import Registry

T = TypeVar("T")
_URL_PAIR = re.compile(
    r"(?P<db>[A-Za-z][A-Za-z0-9+.-]*://.+?),(?P<store>[A-Za-z][A-Za-z0-9+.-]*://.+)"
)
_REGISTRY_ENTRIES = {"index.db", "index.db-wal", "index.db-shm", "store", "locks", "tmp"}
"""What an embedded registry's folder holds: a target folder with anything else is refused."""
_FORM = (
    "give DB_URL,STORE_URL (postgresql://USER@HOST/DB,s3://BUCKET/PREFIX or"
    " postgresql://USER@HOST/DB,file:///DIR) or a folder for an embedded registry"
)


@dataclass(frozen=True)
class Target:
    """Where ``--to`` says the registry goes: a folder, or a database and a store."""

    folder: Path | None = None
    db: str | None = None
    store: str | None = None

    def describe(self) -> str:
        """The target as messages name it (no password)."""
        if self.folder is not None:
            return str(self.folder)
        from hub.catalog.postgres_db import location

        assert self.db is not None and self.store is not None
        return f"{location(self.db)},{self.store}"


def parse_target(text: str) -> Target:
    """The ``Target`` that ``--to TEXT`` names (the grammar is in the module's docstring).

    Raises:
        InvalidArgument: anything else, in one line naming ``--to`` and the form to give.
    """
    from hub.blobstore import BACKENDS
    from hub.catalog import POSTGRES_SCHEMES

    text = text.strip()
    if not text:
        raise InvalidArgument(f"invalid --to '': {_FORM}")
    if "://" not in text:
        return Target(folder=Path(text).expanduser().absolute())
    shown = _redacted(text)
    pair = _URL_PAIR.fullmatch(text)
    if pair is None:
        raise InvalidArgument(
            f"invalid --to {shown!r}: one URL is not a registry (a catalog needs a store for its"
            f" blobs); {_FORM}"
        )
    db, store = pair["db"], pair["store"]
    db_scheme, store_scheme = db.split("://")[0].lower(), store.split("://")[0].lower()
    if db_scheme not in POSTGRES_SCHEMES:
        raise InvalidArgument(
            f"invalid --to {shown!r}: the catalog URL must be postgresql://USER@HOST/DB, not"
            f" {db_scheme + '://'!r}; {_FORM}"
        )
    if store_scheme not in BACKENDS:
        known = ", ".join(f"{name}://" for name in sorted(BACKENDS))
        raise InvalidArgument(
            f"invalid --to {shown!r}: unknown store scheme {store_scheme + '://'!r} after the"
            f" comma (known: {known}); {_FORM}"
        )
    from hub.catalog.postgres_db import location

    try:
        location(db)
    except InvalidArgument:
        raise InvalidArgument(
            f"invalid --to {shown!r}: {_redacted(db)!r} is not a PostgreSQL connection URL; {_FORM}"
        ) from None
    return Target(db=db, store=store)


@dataclass
class MigrateReport:
    """What ``migrate`` copied (``hub migrate --json`` prints these keys)."""

    source: str
    target: str
    repos: int = 0
    versions: int = 0
    aliases: int = 0
    tokens: int = 0
    evals: int = 0
    remote_evals: int = 0
    base_scores: int = 0
    blobs: int = 0
    """Blobs the registry references (all now in the target store)."""
    bytes: int = 0
    blobs_copied: int = 0
    bytes_copied: int = 0
    """Of which copied by this run; the others were in the target store already."""
    schema_migrations: int = 0
    """Migrations applied to a team database that had no (or an older) schema."""


def migrate(source: Registry, to: str) -> MigrateReport:
    """Copy the registry ``source`` into the empty registry ``to`` names (``--to``).

    Args:
        source: the registry to move (opened from ``--home`` / ``--db`` / ``--store``); only
            read.
        to: ``DB_URL,STORE_URL`` or a folder (``parse_target``).

    Returns:
        The counts of what was moved.

    Raises:
        InvalidArgument: a malformed ``--to``, or one naming the source itself or a folder
            that holds something else than a registry.
        OutputExists: the target registry is not empty.
        IndexUnavailable: the target database cannot be reached (the message names --to).
        IndexDamaged, StoreCorrupted: the source is damaged (a blob missing, truncated or no
            longer matching its sha256): repair it, ``hub verify``, then move.
        In every case the source is unchanged and the target's catalog as it was.
    """
    target = parse_target(to)
    _refuse_source(source, target)
    if target.folder is not None:
        _check_folder(target.folder)
    catalog = source.catalog
    report = MigrateReport(source=_describe_source(source), target=target.describe())
    # Shared, as a push holds it: `hub gc` on the source waits rather than delete a blob
    # between the snapshot and its copy.
    with source.store_lock(shared=True):
        state = catalog.integrity_check()
        if state != "ok":
            raise IndexDamaged(
                f"the source catalog {catalog.location} is damaged ({state}): repair or restore"
                " it, check it with `hub verify`, then migrate (nothing was written)",
                path=catalog.location,
            )
        snap = catalog.export_snapshot()
        sizes = _check_source_blobs(source, snap)
        with tempfile.TemporaryDirectory(prefix="hub-migrate-") as scratch:
            dest = _open_target(target, Path(scratch))
            try:
                _fill(source, dest, target, snap, sizes, report)
            finally:
                dest.close()
    return report


def _fill(
    source: Registry,
    dest: Registry,
    target: Target,
    snap: Snapshot,
    sizes: dict[str, int],
    report: MigrateReport,
) -> None:
    """Check the target is empty, give it the schema, copy the blobs, then the catalog."""
    counts = _target_call(target, dest.catalog.row_counts)
    if any(counts.values()):
        raise not_empty(report.target, counts)
    # The store reached once (a listing: a missing bucket or refused credentials fail here,
    # where a HEAD of a blob would only say "absent") before the database is given a schema.
    _target_call(target, lambda: next(iter(dest.store.iter_digests()), None))
    report.schema_migrations = _target_call(target, dest.catalog.upgrade)
    # The target's own lock, shared: a `hub gc` there must not take the blobs copied for a
    # catalog that is not committed yet for orphans.
    with dest.store_lock(shared=True):
        todo = [digest for digest in sorted(sizes) if not dest.store.has(digest)]
        bar = byte_progress(f"migrate to {report.target}", sum(sizes[d] for d in todo))
        try:
            for digest in todo:
                report.bytes_copied += _copy_blob(source, dest.store, digest, bar)
                report.blobs_copied += 1
        finally:
            bar.close()
        _target_call(target, lambda: dest.catalog.import_snapshot(snap))
    report.repos, report.versions = len(snap.repos), len(snap.versions)
    report.aliases, report.tokens = len(snap.aliases), len(snap.tokens)
    report.evals, report.remote_evals = len(snap.evals), len(snap.remote_evals)
    report.base_scores = len(snap.base_scores)
    report.blobs, report.bytes = len(sizes), sum(sizes.values())


def _refuse_source(source: Registry, target: Target) -> None:
    """Refuse a ``--to`` that names the source registry itself."""
    same = False
    if target.folder is not None:
        same = source.db is None and target.folder.resolve() == source.home.resolve()
    elif source.db is not None:
        from hub.catalog.postgres_db import location

        assert target.db is not None
        same = location(target.db) == location(source.db)
    if same:
        raise InvalidArgument(
            f"invalid --to {target.describe()!r}: that is the source registry itself; give an"
            " empty database or folder elsewhere"
        )


def _check_folder(folder: Path) -> None:
    """A target folder must be missing, empty, or an embedded registry (checked for being
    empty later): anything else is someone's files."""
    if folder.exists() and not folder.is_dir():
        raise InvalidArgument(f"invalid --to {str(folder)!r}: it is a file, not a folder")
    foreign = (
        sorted(p.name for p in folder.iterdir() if p.name not in _REGISTRY_ENTRIES)
        if (folder.is_dir())
        else []
    )
    if foreign:
        raise InvalidArgument(
            f"invalid --to {str(folder)!r}: the folder holds other files ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}), not a registry; give a new or empty folder"
        )


def _open_target(target: Target, scratch: Path) -> Registry:
    """The target registry: the folder's embedded one, or the team database and store (with
    ``scratch`` as its home: a remote store's cache, no state to keep)."""
    from hub.registry import Registry

    if target.folder is not None:
        registry = Registry(target.folder)
    else:
        try:
            registry = Registry(scratch, db=target.db, store=target.store)
        except InvalidArgument as error:  # the store URL, as the store backend reads it
            raise InvalidArgument(f"invalid --to {target.describe()!r}: {error}") from None
    _target_call(target, lambda: registry.catalog)
    return registry


def _target_call(target: Target, work: Callable[[], T]) -> T:
    """``work()``, with a storage fault of the target (unreachable, refused, full) named as
    the target's: ``--to ...: cannot reach the database ...``."""
    try:
        return work()
    except HubError as error:
        if error.code not in ("index_unavailable", "index_damaged", "store_unavailable"):
            raise
        raise type(error)(f"--to {target.describe()}: {error}", **error.context) from None


def _check_source_blobs(source: Registry, snap: Snapshot) -> dict[str, int]:
    """digest -> size of every blob the source references, each present in its store with
    the size its files record.

    Raises:
        StoreCorrupted: one is missing or has another size (nothing was written).
    """
    store = source.store
    expected = {digest: size for *_, digest, size in snap.files}
    sizes: dict[str, int] = {}
    for digest in sorted(snap.digests()):
        if not store.has(digest):
            raise _damaged(source, digest, f"is missing from {store.location}")
        size = store.size(digest)
        if digest in expected and size != expected[digest]:
            raise _damaged(
                source,
                digest,
                f"is {size} bytes in {store.location}, not {expected[digest]}: truncated or"
                " overwritten",
            )
        sizes[digest] = size
    return sizes


def _copy_blob(source: Registry, target: BlobStore, digest: str, bar: Any) -> int:
    """Stream blob ``digest`` into ``target``, re-hashed on the way; its size.

    Raises:
        StoreCorrupted: its bytes no longer hash to ``digest`` (nothing is published).
    """
    with source.store.open(digest) as fin, target.writer(expected=digest) as blob:
        while chunk := fin.read(CHUNK):
            blob.write(chunk)
            bar.update(len(chunk))
        if blob.hasher.hexdigest() != digest:
            raise _damaged(
                source,
                digest,
                f"no longer matches its sha256 in {source.store.location}",
                then=", then run the same `hub migrate` again to resume (the target's catalog"
                " was not written; the blobs copied so far stay in its store, unreferenced:"
                " `hub gc` there removes them)",
            )
        return blob.publish()[1]


def _damaged(
    source: Registry,
    digest: str,
    what: str,
    *,
    then: str = " before migrating (nothing was written)",
) -> StoreCorrupted:
    users = source.catalog.versions_using({digest}).get(digest) or ["an eval record"]
    return StoreCorrupted(
        f"the source registry is damaged: blob {digest[:12]} of {', '.join(users)} {what};"
        f" repair it and check it with `hub verify`{then}",
        digest=digest,
    )


def _describe_source(source: Registry) -> str:
    if source.db is None and source.store.location == str(source.home / "store"):
        return str(source.home)
    return f"{source.catalog.location},{source.store.location}"


def _redacted(url: str) -> str:
    """``url`` with any ``:password@`` of its URLs starred out."""
    return re.sub(r"(://[^:/@,]*):[^@/]*@", r"\1:***@", url)
