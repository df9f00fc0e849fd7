"""The SQLite catalog's access records: tokens, pending uploads, and which blobs the index
references (for ``gc``, ``verify`` and the server's read checks). Part of ``SqliteCatalog``
(``hub.catalog.sqlite``), which inherits it; apart to keep each module focused. The
PostgreSQL twin is ``hub.catalog.postgres_access``."""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from hub.catalog.base import TokenRow
from hub.catalog.rows import TOKEN_COLUMNS, forgetting_digests, token_row, utcnow


class SqliteAccess:
    """Tokens, uploads and blob references of ``SqliteCatalog``."""

    if TYPE_CHECKING:
        conn: sqlite3.Connection

        def write(self) -> AbstractContextManager[sqlite3.Connection]: ...

    # -- tokens -------------------------------------------------------------------------
    def add_token(self, token: TokenRow) -> None:
        with self.write() as conn:
            conn.execute(
                f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
                (
                    token.id,
                    token.name,
                    token.hash,
                    json.dumps(list(token.read)),
                    json.dumps(list(token.write)),
                    token.created_at,
                    token.revoked_at,
                ),
            )

    def tokens(self) -> list[TokenRow]:
        rows = self.conn.execute(
            f"SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at"
        ).fetchall()
        return [token_row(row) for row in rows]

    def token(self, token_id: str) -> TokenRow | None:
        row = self.conn.execute(
            f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?", (token_id,)
        ).fetchone()
        return token_row(row) if row else None

    def revoke_token(self, token_id: str, at: str) -> bool:
        with self.write() as conn:
            updated = conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (at, token_id),
            ).rowcount
        return bool(updated)

    # -- pending uploads ----------------------------------------------------------------
    def record_upload(self, token_id: str, digest: str) -> None:
        with self.write() as conn:
            conn.execute(
                "INSERT INTO uploads (token_id, sha256, uploaded_at) VALUES (?,?,?)"
                " ON CONFLICT (token_id, sha256) DO UPDATE SET uploaded_at = excluded.uploaded_at",
                (token_id, digest, utcnow()),
            )

    def uploaded_by(self, token_id: str, digest: str, *, since: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM uploads WHERE token_id = ? AND sha256 = ? AND uploaded_at >= ?",
            (token_id, digest, since),
        ).fetchone()
        return row is not None

    def expire_uploads(self, before: str) -> set[str]:
        with self.write() as conn:
            conn.execute("DELETE FROM uploads WHERE uploaded_at < ?", (before,))
            return {row[0] for row in conn.execute("SELECT DISTINCT sha256 FROM uploads")}

    def pending_uploads(self, since: str) -> set[str]:
        rows = self.conn.execute(
            "SELECT DISTINCT sha256 FROM uploads WHERE uploaded_at >= ?", (since,)
        )
        return {row[0] for row in rows}

    # -- blobs --------------------------------------------------------------------------
    def referenced_digests(self) -> set[str]:
        found = {
            row[0]
            for row in self.conn.execute(
                "SELECT sha256 FROM files UNION SELECT dataset_sha256 FROM evals"
                " UNION SELECT results_sha256 FROM evals UNION SELECT results_sha256"
                " FROM base_scores UNION SELECT dataset_sha256 FROM remote_evals"
                " UNION SELECT results_sha256 FROM remote_evals"
            )
        }
        # --forgetting: its text and per-document sums, kept in the record itself. Read in
        # Python: SQLite's json_extract refuses the whole query over one NaN in a record.
        for (text,) in self.conn.execute(
            "SELECT record FROM evals WHERE record LIKE '%forgetting%'"
            " UNION ALL SELECT record FROM remote_evals WHERE record LIKE '%forgetting%'"
        ):
            found.update(forgetting_digests(json.loads(text)))
        found.discard(None)
        return found

    def versions_using(self, digests: set[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for digest in digests:
            rows = self.conn.execute(
                "SELECT r.repo, v.version, f.path FROM files f"
                " JOIN versions v ON v.id = f.version_id JOIN repos r ON r.id = v.repo_id"
                " WHERE f.sha256 = ? ORDER BY r.repo, v.version",
                (digest,),
            )
            out[digest] = [f"{repo}@v{version} ({path})" for repo, version, path in rows]
        return out

    def blob_namespaces(self, digest: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT DISTINCT r.namespace FROM files f JOIN versions v ON v.id = f.version_id"
            " JOIN repos r ON r.id = v.repo_id WHERE f.sha256 = ? ORDER BY r.namespace",
            (digest,),
        )
        return [row[0] for row in rows]
