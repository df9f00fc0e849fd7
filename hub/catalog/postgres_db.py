"""Connections to a PostgreSQL catalog: one pool per database per process, transactions that
retry on serialization failures, and the driver's errors as the hub's typed ones.

Every message names the database as ``postgresql://USER@HOST:PORT/DB`` (``location``), never
with its password. A server that refuses, is gone or restarts mid-transaction is
``IndexUnavailable`` (retryable: the transaction was rolled back, nothing was changed).
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from schemas.errors import IndexDamaged, IndexUnavailable, InvalidArgument

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

T = TypeVar("T")

CONNECT_TIMEOUT_S = 10
"""How long one connection attempt waits for the server (libpq's ``connect_timeout``)."""
POOL_TIMEOUT_S = 30.0
"""How long a caller waits for a pooled connection before ``IndexUnavailable``."""
POOL_MAX = int(os.environ.get("HUB_DB_POOL_MAX", "8") or 8)
"""Connections one process keeps to one database at most (threads of a server worker)."""
RETRIES = 8
"""Attempts of one transaction that lost a serialization race or a deadlock."""

# SQLSTATEs: a transaction another one beat (retry it), and storage damage (restore).
_RETRYABLE = {"40001", "40P01"}
_DAMAGED = {"XX001", "XX002"}


def location(url: str) -> str:
    """``url`` as the messages name it: ``postgresql://USER@HOST:PORT/DB``, no password (a
    unix socket folder as the host).

    Raises:
        InvalidArgument: ``url`` is not a connection string libpq can read.
    """
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(url)
    except Exception as error:  # psycopg.ProgrammingError: the URL itself is malformed
        raise InvalidArgument(
            f"invalid --db {_without_password(url)!r} (HUB_DATABASE_URL): {_first_line(error)};"
            " give postgresql://USER@HOST[:PORT]/DB"
        ) from None
    if not all(p.isdigit() for p in str(parts.get("port") or "0").split(",")):
        raise InvalidArgument(
            f"invalid --db {_without_password(url)!r} (HUB_DATABASE_URL): port"
            f" {parts['port']!r} is not a number; give postgresql://USER@HOST[:PORT]/DB"
        )
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = str(parts.get("host") or "localhost")
    port = f":{parts['port']}" if parts.get("port") else ""
    database = parts.get("dbname") or ""
    if host.startswith("/"):  # a unix socket's folder
        return f"postgresql://{user}{port}/{database}?host={host}"
    return f"postgresql://{user}{host}{port}/{database}"


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()
    except ValueError:
        return "<unreadable URL>"


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    # libpq: 'connection failed: connection to server at "h" (1.2.3.4), port 5 failed: ...'
    return " ".join(text.splitlines()[0].split()).removeprefix("connection failed: ")


def storage_error(error: BaseException, where: str) -> BaseException:
    """The typed, one-line error for a fault of the database ``where``; ``error`` itself for
    anything else (constraint violations and SQL mistakes are bugs, not storage faults)."""
    import psycopg
    from psycopg_pool import PoolTimeout

    state = getattr(error, "sqlstate", None) or ""
    if state in _RETRYABLE:
        return error  # ``Database.transaction`` runs it again
    if isinstance(error, PoolTimeout):
        return IndexUnavailable(
            f"no connection to the database {where} within {POOL_TIMEOUT_S:.0f} s: the server is"
            " down, unreachable or out of connections; retry when it is back (nothing was"
            " changed)",
            path=where,
        )
    if state in _DAMAGED:
        return IndexDamaged(
            f"the database {where} reports damaged data ({_first_line(error)}): restore it from a"
            " backup; the store's blobs are untouched",
            path=where,
        )
    if state == "53100":
        return IndexUnavailable(
            f"cannot write the database {where}: its disk is full ({_first_line(error)}); free"
            " space on the server and retry (nothing was changed)",
            path=where,
        )
    # A refused connection carries no SQLSTATE in psycopg: libpq's message says why.
    text = str(error)
    if state in ("42501", "28000", "28P01") or (
        not state
        and any(
            words in text
            for words in ("password authentication failed", "no pg_hba.conf entry", "FATAL:  role")
        )
    ):
        return IndexUnavailable(
            f"the database {where} refused access ({_first_line(error)}): check the user,"
            " password and grants in --db / HUB_DATABASE_URL",
            path=where,
        )
    if state == "3D000" or (not state and "FATAL:  database" in text and "does not exist" in text):
        return IndexUnavailable(
            f"the database {where} does not exist ({_first_line(error)}): create it (createdb),"
            " then run `hub db upgrade --db URL`",
            path=where,
        )
    if isinstance(error, psycopg.OperationalError):
        # Refused, unreachable, shut down or restarted under us: the transaction is gone.
        return IndexUnavailable(
            f"cannot reach the database {where}: {_first_line(error)}; check that the server is"
            " up and retry (nothing was changed)",
            path=where,
        )
    return error


class _Pools:
    """One pool per (database, process), shared by the catalogs a process opens on it and
    closed with the last of them. Keyed by pid too: a forked child never uses its parent's
    sockets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, int], tuple[ConnectionPool, int]] = {}

    def acquire(self, url: str) -> ConnectionPool:
        from psycopg_pool import ConnectionPool

        key = (url, os.getpid())
        with self._lock:
            found = self._pools.get(key)
            if found is not None:
                self._pools[key] = (found[0], found[1] + 1)
                return found[0]
            pool = ConnectionPool(
                url,
                min_size=1,
                max_size=max(POOL_MAX, 1),
                timeout=POOL_TIMEOUT_S,
                # A connection the server dropped (restart, failover) is replaced before use.
                check=ConnectionPool.check_connection,
                kwargs={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "hub"},
                name="hub-catalog",
                open=False,
            )
            pool.open(wait=False)
            self._pools[key] = (pool, 1)
            return pool

    def release(self, url: str) -> None:
        key = (url, os.getpid())
        with self._lock:
            found = self._pools.get(key)
            if found is None:
                return
            pool, users = found
            if users > 1:
                self._pools[key] = (pool, users - 1)
                return
            del self._pools[key]
        pool.close(timeout=5)


POOLS = _Pools()


def connect_once(url: str, where: str) -> psycopg.Connection[Any]:
    """One connection outside any pool (the first check at open, ``hub db upgrade``): its
    failure is libpq's own message, at once, not a pool timeout."""
    import psycopg

    try:
        return psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True)
    except psycopg.Error as error:
        raise storage_error(error, where) from None


class Database:
    """A pooled PostgreSQL database: ``read`` runs one statement's worth of work, ``transaction``
    a unit of writes that is retried whole when it loses a race."""

    def __init__(self, url: str, where: str) -> None:
        self.url = url
        self.where = where
        self.pool = POOLS.acquire(url)
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            POOLS.release(self.url)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        import psycopg

        try:
            with self.pool.connection() as conn:
                yield conn
        except psycopg.Error as error:
            raise storage_error(error, self.where) from error
        except Exception as error:
            mapped = storage_error(error, self.where)
            if mapped is error:
                raise
            raise mapped from error

    def read(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``work(conn)`` on a pooled connection, in a transaction of its own (a consistent
        snapshot for everything it reads)."""
        with self._connection() as conn:
            return work(conn)

    def transaction(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``work(conn)`` in one transaction, committed when it returns, rolled back when it
        raises. Run again (from the start, on a fresh snapshot) when PostgreSQL aborted it for
        a serialization failure or a deadlock, up to ``RETRIES`` times, with a random pause."""
        import psycopg

        for attempt in range(1, RETRIES + 1):
            try:
                with self._connection() as conn:
                    # The pool's context commits on a normal exit and rolls back on an error.
                    return work(conn)
            except psycopg.Error as error:
                if error.sqlstate not in _RETRYABLE or attempt == RETRIES:
                    raise
                time.sleep(random.uniform(0, 0.01 * 2**attempt))
        raise AssertionError("unreachable")
