"""The catalog interface: every statement about versions, aliases, tokens, uploads and eval
records goes through one ``Catalog``, and so do the store lock and the settings every server
worker shares; each backend (``hub.catalog.sqlite`` embedded, a team database) is one
subclass.

Callers pass plain Python values and get plain values back: cards as the dicts (or, for
searches, the JSON text) the index stores, rows as the dataclasses below. No SQL, no driver
object crosses this line. Internal row ids (``version_id``) are opaque integers a caller only
hands back to the same catalog.

Storage faults surface as ``IndexUnavailable`` (retryable: unreachable, locked, disk full) or
``IndexDamaged`` (the data is lost or corrupt), each one line naming the database.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hub.catalog.snapshot import Snapshot
    from hub.search import SearchQuery


@dataclass(frozen=True)
class RepoRow:
    """One repository. ``last_version`` is 0 for one created empty (no version yet)."""

    repo: str
    namespace: str
    name: str
    created_at: str
    last_version: int


@dataclass(frozen=True)
class StoredVersion:
    """A version's row id and its stored card (without aliases, which change)."""

    version_id: int
    card: dict[str, Any]


@dataclass(frozen=True)
class CardText:
    """A search result: the row id, the card's stored JSON text (never parsed by the
    catalog: ``hub ls --json`` passes it through) and the version's aliases, sorted."""

    version_id: int
    card: str
    aliases: list[str]


@dataclass(frozen=True)
class Head:
    """What a commit builds on, read inside the commit's transaction with the repository
    locked against other commits (the repository row is created first if missing).

    ``next_version`` is the number a new version gets: one more than any number the
    repository ever gave, so versions stay dense and a removed number is never reused.
    ``version_id``, ``commit`` and ``card`` are the latest version's (None: no version yet).
    """

    repo: str
    next_version: int
    version_id: int | None = None
    commit: str | None = None
    card: dict[str, Any] | None = None


@dataclass
class NewVersion:
    """Commit a new version: ``card`` is the full card (``version == head.next_version``,
    ``commit``, ``files``, ``tasks``, ``tags``, ``metrics``, ``lineage``...), ``parent`` the
    head's commit, ``records`` eval records stored on it in the same transaction (an id
    already stored is skipped)."""

    card: dict[str, Any]
    parent: str | None
    records: Sequence[dict[str, Any]] = ()


@dataclass
class UpdateHead:
    """Nothing new to store: rewrite the head version's card (annotations folded in) and
    add ``records`` to it, in the same transaction."""

    card: dict[str, Any]
    records: Sequence[dict[str, Any]] = ()


@dataclass(frozen=True)
class Committed:
    """What ``Catalog.commit`` wrote: the version's row id, its card and aliases, and
    whether it is a new version (False: the head was updated)."""

    version_id: int
    card: dict[str, Any]
    aliases: list[str]
    created: bool


@dataclass(frozen=True)
class TokenRow:
    """A server token as stored: ``hash`` is sha256 of its secret; scopes are namespaces
    (``*``: all), sorted."""

    id: str
    name: str
    hash: str
    read: tuple[str, ...]
    write: tuple[str, ...]
    created_at: str
    revoked_at: str | None = None


@dataclass(frozen=True)
class EvalRow:
    """An eval record and the version it is on."""

    repo: str
    commit: str
    record: dict[str, Any] = field(default_factory=dict)


class Catalog(abc.ABC):
    """All the registry's metadata, behind one backend.

    A catalog object is used by one thread at a time (the server opens one per worker
    thread); several processes and hosts may use the same database at once: every write
    method is one transaction, and ``commit`` serializes commits to one repository.
    """

    location: str
    """Where the catalog lives, for messages (a file path, or a URL without password)."""

    _store_lock_held: tuple[bool, int] | None = None
    """(shared, depth) while this catalog holds the store lock (``store_lock``)."""

    # -- lifecycle and schema -----------------------------------------------------------
    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection(s). The object is unusable afterwards."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The number of migrations applied (0: an empty database)."""

    @abc.abstractmethod
    def latest_schema(self) -> int:
        """The number of migrations this code knows; ``upgrade`` brings the database there."""

    @abc.abstractmethod
    def upgrade(self) -> int:
        """Apply the pending migrations, once, even when several processes call it at once
        (the embedded backend does so when it opens; a team database through ``hub db
        upgrade``). Returns how many were applied (0: up to date)."""

    @abc.abstractmethod
    def integrity_check(self) -> str:
        """``"ok"`` when the database is sound, else the backend's description of the damage."""

    # -- what every process of one hub shares (hub/uploads.py states the lock's rule) ----
    @contextlib.contextmanager
    def store_lock(self, *, shared: bool) -> Iterator[None]:
        """Hold the store lock for the ``with`` block: ``shared`` for whatever writes blobs
        and then references them (pushes, commits, uploads, eval records), exclusive for
        ``gc``. It binds every process and host on this catalog, and dies with its holder.

        Re-entrant on one catalog object: a hold inside a hold is free (a server commit
        holds it around ``Registry.push``, which takes it too); on a team database every
        shared hold of a process shares one session (``hub.catalog.coordination``). A second
        hold through a session of its own would queue behind a waiting ``gc``, which waits
        for the first hold: neither would ever end.

        Raises:
            AssertionError: an exclusive hold asked for inside a shared one (never granted).
            IndexUnavailable: the database holding the lock cannot be reached.
        """
        held = self._store_lock_held
        if held is not None:
            assert shared or not held[0], "the store lock is held shared: not upgradable"
            self._store_lock_held = (held[0], held[1] + 1)
            try:
                yield
            finally:
                self._store_lock_held = held
            return
        with self._hold_store_lock(shared=shared):
            self._store_lock_held = (shared, 1)
            try:
                yield
            finally:
                self._store_lock_held = None

    @abc.abstractmethod
    def _hold_store_lock(self, *, shared: bool) -> contextlib.AbstractContextManager[None]:
        """The backend's lock under ``store_lock``: taken on entry (waiting for it),
        released on exit, and released by the system when the holding process dies."""

    @abc.abstractmethod
    def setting(self, key: str, default: str) -> str:
        """The value stored under ``key``, storing ``default`` first if there is none.

        Insert-if-absent then read, in one transaction: processes that start at once and
        each bring their own ``default`` (a random signing key) all get the one stored first.
        """

    # -- repositories and versions ------------------------------------------------------
    @abc.abstractmethod
    def repo(self, repo: str) -> RepoRow | None:
        """The repository ``ns/name``, or None."""

    @abc.abstractmethod
    def create_repo(self, repo: str, namespace: str, name: str) -> bool:
        """Create an empty repository; False (nothing written) if it exists."""

    @abc.abstractmethod
    def find_versions(
        self,
        repo: str,
        *,
        number: int | None = None,
        alias: str | None = None,
        commit_prefix: str | None = None,
    ) -> list[StoredVersion]:
        """The versions of ``repo`` with version ``number``, or that ``alias`` points at, or
        whose commit starts with ``commit_prefix`` (exactly one of the three given; a prefix
        may match several). Empty when none (or no such repository)."""

    @abc.abstractmethod
    def versions(self, repo: str) -> list[StoredVersion]:
        """Every version of ``repo``, oldest first."""

    @abc.abstractmethod
    def commit(self, repo: str, build: Callable[[Head], NewVersion | UpdateHead]) -> Committed:
        """Commit to ``repo`` in one transaction: lock the repository (create its row if
        missing), read its ``Head``, call ``build(head)`` and write what it returns.

        ``build`` runs inside the transaction, so what it checks holds when the write
        happens: the expected parent head of a Hugging Face commit is compared there. An
        exception from ``build`` rolls everything back (the repository row included) and
        propagates. ``build`` may be called again after a serialization failure, so it must
        not have side effects outside its return value.
        """

    @abc.abstractmethod
    def update_card(self, version_id: int, card: dict[str, Any]) -> None:
        """Rewrite a version's stored card and everything searched from it (tasks, tags,
        metrics, the text index) in one transaction."""

    @abc.abstractmethod
    def remove_versions(self, repo: str, commits: Sequence[str]) -> bool:
        """Remove the versions of ``repo`` with these commits (files, annotations, aliases,
        lineage and eval records with them) in one transaction; the repository goes too when
        none is left. False, with nothing removed, when the repository or one of the
        versions is gone already (a concurrent removal). An empty ``commits`` removes a
        repository that has no version."""

    # -- aliases ------------------------------------------------------------------------
    @abc.abstractmethod
    def aliases(self, version_id: int) -> list[str]:
        """The aliases pointing at the version, sorted."""

    @abc.abstractmethod
    def set_alias(self, version_id: int, alias: str) -> list[str] | None:
        """Point ``alias`` of the version's repository at it (moving it if it exists), in one
        transaction. The version's aliases afterwards, or None when it was removed meanwhile
        (nothing written)."""

    # -- search (hub ls, the web page) --------------------------------------------------
    @abc.abstractmethod
    def search(self, query: SearchQuery) -> list[CardText]:
        """Cards matching every filter of ``query``, in its order, at most ``query.limit``.

        Full-text matching of ``query.text`` is the backend's (its words, prefix-matched, over
        repository name, description and tasks); the filters and their error messages are
        ``hub.search``'s, the same for every backend.
        """

    @abc.abstractmethod
    def search_page(
        self, query: SearchQuery, *, offset: int, limit: int
    ) -> tuple[list[CardText], int]:
        """Results ``offset .. offset + limit`` of ``query`` (paged by the database: only the
        page's cards are read) and how many match in all. Arguments are checked by
        ``hub.search.run_search_page``."""

    @abc.abstractmethod
    def text_matches(self, query: SearchQuery) -> list[int]:
        """The row ids of the versions ``query.text`` matches within ``query.namespaces`` and
        ``query.all_versions`` (no other filter): ``hub.search.narrowed`` runs several
        queries over one text match by passing them back as ``SearchQuery.within``."""

    @abc.abstractmethod
    def facet_counts(
        self, query: SearchQuery, *, top: int, only: Sequence[str]
    ) -> dict[str, list[tuple[Any, int]]]:
        """``hub.search.facet_counts``: per facet in ``only``, ``(value, count)``, most
        frequent first, at most ``top``."""

    @abc.abstractmethod
    def metric_names(self, query: SearchQuery, *, top: int) -> list[str]:
        """The metric names on the versions in ``query``'s namespaces and versions (no other
        filter), sorted, at most ``top``."""

    @abc.abstractmethod
    def most_common_metric(self, query: SearchQuery) -> str | None:
        """The metric name on most of ``query``'s results (ties: alphabetical)."""

    @abc.abstractmethod
    def built_from(self, commit: str, namespaces: list[str] | None) -> list[dict[str, Any]]:
        """Cards of the versions whose lineage names the exact ``commit`` (composite input or
        training parent), newest first, in ``namespaces`` (None: all)."""

    # -- tokens -------------------------------------------------------------------------
    @abc.abstractmethod
    def add_token(self, token: TokenRow) -> None:
        """Store a new token."""

    @abc.abstractmethod
    def tokens(self) -> list[TokenRow]:
        """Every token, revoked ones included, oldest first."""

    @abc.abstractmethod
    def token(self, token_id: str) -> TokenRow | None:
        """The token with this id, or None."""

    @abc.abstractmethod
    def revoke_token(self, token_id: str, at: str) -> bool:
        """Mark an active token revoked at ``at``; False if none is active with this id."""

    # -- pending uploads (hub/uploads.py states the rule) -------------------------------
    @abc.abstractmethod
    def record_upload(self, token_id: str, digest: str) -> None:
        """Record (or refresh) that the token ``token_id`` sent the blob ``digest`` now."""

    @abc.abstractmethod
    def uploaded_by(self, token_id: str, digest: str, *, since: str) -> bool:
        """Whether ``token_id`` sent blob ``digest`` at or after ``since`` (ISO time)."""

    @abc.abstractmethod
    def expire_uploads(self, before: str) -> set[str]:
        """Drop upload records older than ``before``; return the digests still pending."""

    @abc.abstractmethod
    def pending_uploads(self, since: str) -> set[str]:
        """The digests uploaded at or after ``since`` (ISO time): kept by gc for their commit."""

    # -- eval records -------------------------------------------------------------------
    @abc.abstractmethod
    def add_eval(
        self, repo: str, commit: str, record: dict[str, Any], metrics: Sequence[dict[str, Any]]
    ) -> bool:
        """In one transaction: store ``record`` (its ``id``, ``created_at``, ``source``,
        ``dataset.sha256``, ``results_sha256``) on the version ``repo@commit`` and append
        ``metrics`` to that version's card (searchable at once). False, with nothing
        written, when the version is gone."""

    @abc.abstractmethod
    def add_evals(
        self, items: Sequence[tuple[str, str, dict[str, Any], Sequence[dict[str, Any]]]]
    ) -> str | None:
        """``add_eval`` of each ``(repo, commit, record, metrics)``, all in one transaction
        (one ``hub eval`` of several adapters is recorded whole or not at all). Returns None,
        or ``repo@commit`` of a version that is gone, with nothing written."""

    @abc.abstractmethod
    def eval_records(self, repo: str, commit: str) -> list[dict[str, Any]]:
        """The eval records of the version ``repo@commit``, oldest first."""

    @abc.abstractmethod
    def eval_record(self, eval_id: str) -> EvalRow | None:
        """The eval record ``eval_id`` and its version, or None."""

    @abc.abstractmethod
    def base_scores(self, key: str) -> str | None:
        """The digest of the base model's cached per-example scores under ``key``, or None."""

    @abc.abstractmethod
    def set_base_scores(self, key: str, digest: str) -> None:
        """Cache (or replace) the digest of the base's scores under ``key``."""

    @abc.abstractmethod
    def add_remote_eval(self, remote: str, repo: str, commit: str, record: dict[str, Any]) -> None:
        """Keep here a record of the version ``repo@commit`` of the team hub ``remote``
        (``hub eval --from`` whose token could not write it back)."""

    @abc.abstractmethod
    def remote_evals(self, remote: str, repo: str, commit: str) -> list[dict[str, Any]]:
        """The records kept by ``add_remote_eval`` for that version, oldest first."""

    # -- blobs (gc, verify, server access checks) ---------------------------------------
    @abc.abstractmethod
    def referenced_digests(self) -> set[str]:
        """Every blob something in the catalog points at: version files, eval datasets and
        per-example results (of local versions and of remote ones kept here; a forgetting
        text and its results too), cached base scores."""

    @abc.abstractmethod
    def versions_using(self, digests: set[str]) -> dict[str, list[str]]:
        """digest -> ``['ns/name@v3 (path)', ...]`` for each given digest."""

    @abc.abstractmethod
    def blob_namespaces(self, digest: str) -> list[str]:
        """The namespaces with a version that uses blob ``digest``, sorted."""

    # -- moving a registry (hub migrate; the rows in hub.catalog.snapshot) ---------------
    @abc.abstractmethod
    def row_counts(self) -> dict[str, int]:
        """Rows per table a move fills (``snapshot.COUNTED``); all 0 in a database that has
        no schema yet (readable before ``upgrade``, so a move can refuse a non-empty target
        before it changes anything)."""

    @abc.abstractmethod
    def export_snapshot(self) -> Snapshot:
        """Every row a move copies (``hub.catalog.snapshot.Snapshot``), read in one
        consistent read transaction: a commit made meanwhile is either all in or not at all."""

    @abc.abstractmethod
    def import_snapshot(self, snapshot: Snapshot) -> None:
        """Write ``snapshot`` into this empty catalog in one transaction, versions rebuilt by
        the backend as a push writes them, and compare what reads back with ``snapshot``
        before it commits (``hub.catalog.snapshot.write_snapshot``).

        Raises:
            OutputExists: the catalog is not empty (checked inside the transaction).
            IndexDamaged: the copy does not read back equal to ``snapshot``.
            In either case nothing is written.
        """
