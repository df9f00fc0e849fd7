"""The embedded catalog's connection: every SQLite storage fault becomes a typed, one-line
error naming the file (``IndexUnavailable``: retry or fix the disk; ``IndexDamaged``: restore
from a backup)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from schemas.errors import IndexDamaged, IndexUnavailable

BUSY_TIMEOUT_MS = 60_000


def storage_error(error: sqlite3.Error, path: Path) -> Exception:
    """The typed, one-line error for a storage fault SQLite reported on the index ``path``;
    ``error`` itself for anything else (constraint violations, SQL mistakes are bugs)."""
    name = getattr(error, "sqlite_errorname", "") or ""
    folder = path.parent
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return IndexDamaged(
            f"the index {path} is damaged ({error}): it was truncated or overwritten. Restore"
            " it from a backup; the store's blobs are untouched",
            path=str(path),
        )
    if name.startswith("SQLITE_FULL"):
        return IndexUnavailable(
            f"cannot write the index {path}: the disk is full; free space on {folder} and retry"
            " (nothing was changed)",
            path=str(path),
        )
    if name.startswith("SQLITE_IOERR"):
        return IndexUnavailable(
            f"cannot read or write the index {path}: disk I/O error; the disk is probably full"
            f" or failing: check free space on {folder} and retry (nothing was changed)",
            path=str(path),
        )
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH")):
        return IndexUnavailable(
            f"cannot open the index {path} ({error}): {folder} must be writable by you, since"
            " SQLite keeps index.db-wal and index.db-shm beside it; fix its permissions or"
            " use another --home",
            path=str(path),
        )
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return IndexUnavailable(
            f"the index {path} stayed locked by another process for"
            f" {BUSY_TIMEOUT_MS // 1000} s; retry when it is done (nothing was changed)",
            path=str(path),
        )
    return error


class _Cursor(sqlite3.Cursor):
    """Every call that touches the file turns SQLite's storage faults into typed errors."""

    def _fail(self, error: sqlite3.Error) -> Exception:
        connection = self.connection
        assert isinstance(connection, Connection)
        return storage_error(error, connection.index_path)

    def execute(self, *args: Any) -> _Cursor:
        try:
            return super().execute(*args)
        except sqlite3.Error as error:
            raise self._fail(error) from error

    def executemany(self, *args: Any) -> _Cursor:
        try:
            return super().executemany(*args)
        except sqlite3.Error as error:
            raise self._fail(error) from error

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except sqlite3.Error as error:
            raise self._fail(error) from error

    def fetchmany(self, *args: Any) -> list[Any]:
        try:
            return super().fetchmany(*args)
        except sqlite3.Error as error:
            raise self._fail(error) from error

    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        except sqlite3.Error as error:
            raise self._fail(error) from error

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except sqlite3.Error as error:
            raise self._fail(error) from error


class Connection(sqlite3.Connection):
    index_path: Path

    def cursor(self, factory: Any = _Cursor) -> Any:
        return super().cursor(factory)

    def execute(self, *args: Any) -> _Cursor:
        return self.cursor().execute(*args)

    def executemany(self, *args: Any) -> _Cursor:
        return self.cursor().executemany(*args)

    def executescript(self, script: str) -> Any:
        try:
            return super().executescript(script)
        except sqlite3.Error as error:
            raise storage_error(error, self.index_path) from error
