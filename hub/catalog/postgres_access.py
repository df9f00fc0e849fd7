"""The PostgreSQL catalog's access records: tokens, pending uploads, and which blobs the
catalog references (for ``gc``, ``verify`` and the server's read checks). Part of
``PostgresCatalog`` (``hub.catalog.postgres``), which inherits it; apart to keep each module
focused. The SQLite twin is ``hub.catalog.sqlite_access``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from hub.catalog.base import TokenRow
from hub.catalog.rows import TOKEN_COLUMNS, token_row, utcnow

if TYPE_CHECKING:
    from hub.catalog.postgres_db import Database


class PostgresAccess:
    """Tokens, uploads and blob references of ``PostgresCatalog``."""

    if TYPE_CHECKING:

        def _ready(self) -> Database: ...

    # -- tokens -------------------------------------------------------------------------
    def add_token(self, token: TokenRow) -> None:
        self._ready().transaction(
            lambda conn: conn.execute(
                f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s)",
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
        )

    def tokens(self) -> list[TokenRow]:
        rows = self._ready().read(
            lambda conn: conn.execute(
                f"SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id"
            ).fetchall()
        )
        return [token_row(row) for row in rows]

    def token(self, token_id: str) -> TokenRow | None:
        row = self._ready().read(
            lambda conn: conn.execute(
                f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = %s", (token_id,)
            ).fetchone()
        )
        return token_row(row) if row else None

    def revoke_token(self, token_id: str, at: str) -> bool:
        return self._ready().transaction(
            lambda conn: bool(
                conn.execute(
                    "UPDATE tokens SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
                    (at, token_id),
                ).rowcount
            )
        )

    # -- pending uploads ----------------------------------------------------------------
    def record_upload(self, token_id: str, digest: str) -> None:
        self._ready().transaction(
            lambda conn: conn.execute(
                "INSERT INTO uploads (token_id, sha256, uploaded_at) VALUES (%s,%s,%s)"
                " ON CONFLICT (token_id, sha256) DO UPDATE SET uploaded_at = excluded.uploaded_at",
                (token_id, digest, utcnow()),
            )
        )

    def uploaded_by(self, token_id: str, digest: str, *, since: str) -> bool:
        row = self._ready().read(
            lambda conn: conn.execute(
                "SELECT 1 FROM uploads WHERE token_id = %s AND sha256 = %s AND uploaded_at >= %s",
                (token_id, digest, since),
            ).fetchone()
        )
        return row is not None

    def expire_uploads(self, before: str) -> set[str]:
        def expire(conn: Any) -> set[str]:
            conn.execute("DELETE FROM uploads WHERE uploaded_at < %s", (before,))
            return {row[0] for row in conn.execute("SELECT DISTINCT sha256 FROM uploads")}

        return self._ready().transaction(expire)

    def pending_uploads(self, since: str) -> set[str]:
        rows = self._ready().read(
            lambda conn: conn.execute(
                "SELECT DISTINCT sha256 FROM uploads WHERE uploaded_at >= %s", (since,)
            ).fetchall()
        )
        return {row[0] for row in rows}

    # -- blobs --------------------------------------------------------------------------
    def referenced_digests(self) -> set[str]:
        rows = self._ready().read(
            lambda conn: conn.execute(
                "SELECT sha256 FROM files UNION SELECT results_sha256 FROM base_scores"
                + "".join(
                    f" UNION SELECT {column} FROM {table}"
                    for table in ("evals", "remote_evals")
                    for column in (
                        "dataset_sha256",
                        "results_sha256",
                        # --forgetting: its text and per-document sums
                        "forgetting_dataset_sha256",
                        "forgetting_results_sha256",
                    )
                )
            ).fetchall()
        )
        return {row[0] for row in rows if row[0] is not None}

    def versions_using(self, digests: set[str]) -> dict[str, list[str]]:
        rows = self._ready().read(
            lambda conn: conn.execute(
                "SELECT f.sha256, r.repo, v.version, f.path FROM files f"
                " JOIN versions v ON v.id = f.version_id JOIN repos r ON r.id = v.repo_id"
                " WHERE f.sha256 = ANY(%s) ORDER BY r.repo, v.version",
                (sorted(digests),),
            ).fetchall()
        )
        out: dict[str, list[str]] = {digest: [] for digest in digests}
        for digest, repo, version, path in rows:
            out[digest].append(f"{repo}@v{version} ({path})")
        return out

    def blob_namespaces(self, digest: str) -> list[str]:
        rows = self._ready().read(
            lambda conn: conn.execute(
                "SELECT DISTINCT r.namespace FROM files f JOIN versions v ON v.id = f.version_id"
                " JOIN repos r ON r.id = v.repo_id WHERE f.sha256 = %s ORDER BY r.namespace",
                (digest,),
            ).fetchall()
        )
        return [row[0] for row in rows]
