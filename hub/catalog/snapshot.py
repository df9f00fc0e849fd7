"""A whole catalog as plain rows, read and written the same way by both SQL backends
(``Catalog.export_snapshot`` / ``Catalog.import_snapshot``): what ``hub migrate`` moves.

The snapshot holds what cannot be derived: repositories with their version counters, every
version's card and parent commit, aliases, tokens (their stored hashes and scopes), eval
records with the blob columns as stored, cached base scores and records kept of remote
versions. Everything a backend derives from a card (files, tasks, tags, metrics, lineage, the
text index) is rebuilt by the backend's own ``_insert_version``, exactly as a push writes it;
``files`` and ``lineage`` are read too, so the copy can be compared with its source.

Internal row ids are not kept (they are the target's own), but rows are written in the
source's id order, so whatever a backend orders by id comes out in the same order. Pending
uploads are not moved: they belong to server workers of the source, which a move stops.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from hub.catalog.base import TokenRow
from hub.catalog.rows import load_card
from schemas.errors import IndexDamaged, OutputExists


@dataclass(frozen=True)
class RepoDump:
    """A repository row: ``version_counter`` is the highest number it ever gave (a removed
    version's number is never reused, on the target either)."""

    repo: str
    namespace: str
    name: str
    created_at: str
    last_version: int
    version_counter: int


@dataclass(frozen=True)
class VersionDump:
    """A version: its repository, parent commit and card (number, commit, time, files...)."""

    repo: str
    parent: str | None
    card: dict[str, Any]


@dataclass(frozen=True)
class EvalDump:
    """An eval record. ``dataset_sha256`` / ``results_sha256`` are the columns as stored:
    None for a record imported at push, whose blobs are the version's own files."""

    id: str
    repo: str
    commit: str
    created_at: str
    source: str
    dataset_sha256: str | None
    results_sha256: str | None
    record: dict[str, Any]


@dataclass(frozen=True)
class RemoteEvalDump:
    """A record kept of a remote hub's version (``Catalog.add_remote_eval``)."""

    id: str
    remote: str
    repo: str
    commit: str
    created_at: str
    dataset_sha256: str | None
    results_sha256: str | None
    record: dict[str, Any]


@dataclass
class Snapshot:
    """Every row of a catalog that a move copies, in the source's order."""

    repos: list[RepoDump] = field(default_factory=list)
    versions: list[VersionDump] = field(default_factory=list)
    aliases: list[tuple[str, str, str]] = field(default_factory=list)
    """``(repo, alias, commit)``."""
    tokens: list[TokenRow] = field(default_factory=list)
    evals: list[EvalDump] = field(default_factory=list)
    base_scores: list[tuple[str, str, str]] = field(default_factory=list)
    """``(key, results_sha256, created_at)``."""
    remote_evals: list[RemoteEvalDump] = field(default_factory=list)
    files: list[tuple[str, int, str, str, int]] = field(default_factory=list)
    """Derived, for the comparison: ``(repo, version, path, sha256, size)``."""
    lineage: list[tuple[str, int, str, str]] = field(default_factory=list)
    """Derived, for the comparison: ``(repo, version, commit, kind)``."""

    def digests(self) -> set[str]:
        """Every blob the rows reference: what ``Catalog.referenced_digests`` answers for the
        catalog they were read from, taken from the snapshot itself so that it holds for
        the same moment (a version removed since still has its blobs copied)."""
        found: set[Any] = {digest for *_, digest, _ in self.files}
        found |= {digest for _, digest, _ in self.base_scores}
        for record in self.evals:
            found |= {record.dataset_sha256, record.results_sha256, *_forgetting(record.record)}
        for kept in self.remote_evals:
            found |= {kept.dataset_sha256, kept.results_sha256, *_forgetting(kept.record)}
        return {digest for digest in found if isinstance(digest, str)}

    def difference(self, other: Snapshot) -> str | None:
        """The first kind of row in which ``other`` differs from this one, described; None
        when they are equal."""
        for part in fields(self):
            mine, theirs = getattr(self, part.name), getattr(other, part.name)
            if not _same(mine, theirs):
                first = next(
                    (
                        i
                        for i, (a, b) in enumerate(zip(mine, theirs, strict=False))
                        if not _same(a, b)
                    ),
                    min(len(mine), len(theirs)),
                )
                return (
                    f"{part.name}: {len(mine)} rows against {len(theirs)},"
                    f" first differing at {first}"
                )
        return None


def _forgetting(record: dict[str, Any]) -> tuple[Any, Any]:
    """A ``--forgetting`` record's text and per-document sums (their blobs)."""
    forgetting = record.get("forgetting")
    if not isinstance(forgetting, dict):
        return None, None
    dataset = forgetting.get("dataset")
    return (dataset.get("sha256") if isinstance(dataset, dict) else None), forgetting.get(
        "results_sha256"
    )


def _same(a: Any, b: Any) -> bool:
    # A NaN in a record (a stderr of one example) is never == itself; its repr is.
    return bool(a == b) or repr(a) == repr(b)


COUNTED = ("repos", "versions", "aliases", "tokens", "evals", "base_scores", "remote_evals")
"""The tables a target must have no row in (``row_counts``)."""


def row_counts(conn: Any) -> dict[str, int]:
    """How many rows each of ``COUNTED`` holds (a database with the schema of migration 1
    or later: every backend has had these tables since)."""
    return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in COUNTED}


def describe_counts(counts: dict[str, int]) -> str:
    """``3 repos, 5 versions, 1 tokens`` for the tables that hold rows."""
    return ", ".join(f"{n} {table.replace('_', ' ')}" for table, n in counts.items() if n)


def not_empty(location: str, counts: dict[str, int]) -> OutputExists:
    """The refusal of a target catalog that holds rows already."""
    return OutputExists(
        f"the target {location} is not empty ({describe_counts(counts)}): `hub migrate` moves"
        " a registry only into an empty one; give a new database or folder (nothing was"
        " written)",
        path=location,
    )


def read_snapshot(conn: Any) -> Snapshot:
    """Every row a move copies, read on ``conn`` (the caller makes it one consistent read)."""
    snap = Snapshot()
    snap.repos = [
        RepoDump(*row)
        for row in conn.execute(
            "SELECT repo, namespace, name, created_at, last_version, version_counter"
            " FROM repos ORDER BY id"
        )
    ]
    snap.versions = [
        VersionDump(repo, parent, load_card(card))
        for repo, parent, card in conn.execute(
            "SELECT r.repo, v.parent_commit, v.card FROM versions v"
            " JOIN repos r ON r.id = v.repo_id ORDER BY v.id"
        )
    ]
    snap.aliases = [
        (repo, alias, commit)
        for repo, alias, commit in conn.execute(
            "SELECT r.repo, a.alias, v.commit_id FROM aliases a JOIN repos r ON r.id = a.repo_id"
            " JOIN versions v ON v.id = a.version_id"
        )
    ]
    snap.tokens = [
        TokenRow(row[0], row[1], row[2], _scopes(row[3]), _scopes(row[4]), row[5], row[6])
        for row in conn.execute(
            "SELECT id, name, hash, read, write, created_at, revoked_at FROM tokens"
        )
    ]
    snap.evals = [
        EvalDump(row[0], row[1], row[2], row[3], row[4], row[5], row[6], json.loads(row[7]))
        for row in conn.execute(
            "SELECT e.id, r.repo, v.commit_id, e.created_at, e.source, e.dataset_sha256,"
            " e.results_sha256, e.record FROM evals e JOIN versions v ON v.id = e.version_id"
            " JOIN repos r ON r.id = v.repo_id"
        )
    ]
    snap.base_scores = [
        (key, digest, at)
        for key, digest, at in conn.execute(
            "SELECT key, results_sha256, created_at FROM base_scores"
        )
    ]
    snap.remote_evals = [
        RemoteEvalDump(row[0], row[1], row[2], row[3], row[4], row[5], row[6], json.loads(row[7]))
        for row in conn.execute(
            "SELECT id, remote, repo, commit_id, created_at, dataset_sha256, results_sha256,"
            " record FROM remote_evals"
        )
    ]
    snap.files = [
        (repo, int(version), path, digest, int(size))
        for repo, version, path, digest, size in conn.execute(
            "SELECT r.repo, v.version, f.path, f.sha256, f.size FROM files f"
            " JOIN versions v ON v.id = f.version_id JOIN repos r ON r.id = v.repo_id"
        )
    ]
    snap.lineage = [
        (repo, int(version), commit, kind)
        for repo, version, commit, kind in conn.execute(
            "SELECT r.repo, v.version, l.commit_id, l.kind FROM lineage l"
            " JOIN versions v ON v.id = l.version_id JOIN repos r ON r.id = v.repo_id"
        )
    ]
    # Text is ordered here, not in SQL: PostgreSQL sorts some columns by the server's locale,
    # SQLite by bytes, and a copy must read back in the order of its source.
    snap.aliases.sort()
    snap.tokens.sort(key=lambda t: (t.created_at, t.id))
    snap.evals.sort(key=lambda e: e.id)
    snap.base_scores.sort()
    snap.remote_evals.sort(key=lambda e: e.id)
    snap.files.sort()
    snap.lineage.sort()
    return snap


def _scopes(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


class SnapshotWriter(Protocol):
    """The catalog methods a snapshot is written with (inside the open transaction)."""

    location: str

    def _insert_version(
        self, conn: Any, repo_id: int, card: dict[str, Any], parent: str | None
    ) -> int: ...

    def _eval_columns(self, record: dict[str, Any]) -> dict[str, Any]: ...


def write_snapshot(catalog: SnapshotWriter, conn: Any, snap: Snapshot, p: str) -> None:
    """Write ``snap`` into the empty catalog on ``conn``, then read it back and compare, all in
    the caller's one transaction: an error (a non-empty catalog, a row that does not read back
    as it was) rolls everything back.

    Raises:
        OutputExists: the catalog holds rows already.
        IndexDamaged: the copy does not read back equal to ``snap`` (nothing is written).
    """
    counts = row_counts(conn)
    if any(counts.values()):
        raise not_empty(catalog.location, counts)
    repo_ids: dict[str, int] = {}
    for repo in snap.repos:
        conn.execute(
            "INSERT INTO repos (repo, namespace, name, created_at, last_version,"
            f" version_counter) VALUES ({p},{p},{p},{p},{p},{p})",
            (repo.repo, repo.namespace, repo.name, repo.created_at, repo.last_version,
             repo.version_counter),
        )  # fmt: skip
        found = conn.execute(f"SELECT id FROM repos WHERE repo = {p}", (repo.repo,)).fetchone()
        repo_ids[repo.repo] = int(found[0])
    version_ids: dict[tuple[str, str], int] = {}
    for version in snap.versions:
        version_id = catalog._insert_version(
            conn, repo_ids[version.repo], version.card, version.parent
        )
        version_ids[(version.repo, version.card["commit"])] = version_id
    for repo_name, alias, commit in snap.aliases:
        conn.execute(
            f"INSERT INTO aliases (repo_id, alias, version_id) VALUES ({p},{p},{p})",
            (repo_ids[repo_name], alias, version_ids[(repo_name, commit)]),
        )
    for token in snap.tokens:
        conn.execute(
            "INSERT INTO tokens (id, name, hash, read, write, created_at, revoked_at)"
            f" VALUES ({p},{p},{p},{p},{p},{p},{p})",
            (token.id, token.name, token.hash, json.dumps(list(token.read)),
             json.dumps(list(token.write)), token.created_at, token.revoked_at),
        )  # fmt: skip
    for ev in snap.evals:
        columns = {
            "id": ev.id,
            "version_id": version_ids[(ev.repo, ev.commit)],
            "created_at": ev.created_at,
            "source": ev.source,
            "dataset_sha256": ev.dataset_sha256,
            "results_sha256": ev.results_sha256,
            "record": json.dumps(ev.record, sort_keys=True),
            **catalog._eval_columns(ev.record),
        }
        _insert(conn, "evals", columns, p)
    for key, digest, at in snap.base_scores:
        conn.execute(
            f"INSERT INTO base_scores (key, results_sha256, created_at) VALUES ({p},{p},{p})",
            (key, digest, at),
        )
    for remote in snap.remote_evals:
        columns = {
            "id": remote.id,
            "remote": remote.remote,
            "repo": remote.repo,
            "commit_id": remote.commit,
            "created_at": remote.created_at,
            "dataset_sha256": remote.dataset_sha256,
            "results_sha256": remote.results_sha256,
            "record": json.dumps(remote.record, sort_keys=True),
            **catalog._eval_columns(remote.record),
        }
        _insert(conn, "remote_evals", columns, p)
    difference = snap.difference(read_snapshot(conn))
    if difference is not None:
        raise IndexDamaged(
            f"the copy in {catalog.location} does not read back as its source ({difference});"
            " nothing was written: report this as a bug",
            path=catalog.location,
        )


def _insert(conn: Any, table: str, columns: dict[str, Any], p: str) -> None:
    names = ", ".join(columns)
    marks = ",".join([p] * len(columns))
    conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", tuple(columns.values()))
