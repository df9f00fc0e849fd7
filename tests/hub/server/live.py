"""A real `hub serve` app on 127.0.0.1 (uvicorn in a thread, random free port), and tokens.

Shared by tests/hub/server and tests/e2e: ``start_server(home, **create_app_options)``
yields a running server; the ``live_server`` fixture is one over the test's ``hub_home``.

A test module (a server test or any other: tests/conftest.py offers ``deployment`` to all)
runs on both deployments (SQLite + a folder, PostgreSQL + S3) by opting in:
``pytestmark = pytest.mark.usefixtures("deployment")``. ``hub_home`` then sets
``HUB_DATABASE_URL`` / ``HUB_STORE_URL`` on team, the ``registry`` fixture opens it, and
``live_server`` serves the deployment's catalog and store; a test that starts its own server
passes ``**deployment``. What the tests check of the registry goes through the ``registry``
fixture, ``LiveServer.registry()``, ``LiveServer.hub_args()`` (a `hub` process's options) and
the backend-neutral probes below (``store_leftovers``, ``in_flight_bytes``, ``crashed_write``,
``overwrite_blob``, ``count_rows``), never through the folder in ``home``.
``serve_process(home, *options)`` runs the command itself, ``hub serve``, as a process of its
own (its workers too, with ``--workers N``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass
class LiveServer:
    url: str
    home: Path
    server: Any
    db: str | None = None
    store: str | None = None

    def registry(self) -> Any:
        """The registry this server serves (its catalog and store), for a test's own use."""
        from hub import Registry

        return Registry(self.home, db=self.db, store=self.store)

    def hub_args(self) -> list[str]:
        """The options that point a `hub` process at this server's registry (``--home``,
        and ``--db`` / ``--store`` on the team deployment); the AWS settings it needs are in
        the environment (``s3_env``)."""
        args = ["--home", str(self.home)]
        if self.db:
            args += ["--db", self.db]
        if self.store:
            args += ["--store", self.store]
        return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def start_server(home: Path, **options: Any) -> Iterator[LiveServer]:
    import uvicorn

    from hub import Registry
    from hub.server import create_app

    Registry(home, db=options.get("db"), store=options.get("store")).close()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(home, **options), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield LiveServer(
            f"http://127.0.0.1:{port}", home, server, options.get("db"), options.get("store")
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)


DEPLOYMENTS = ("embedded", "team")
"""The two ways a hub is deployed: SQLite + a local folder (``--home``), and PostgreSQL + S3
(``--db postgresql://... --store s3://...``), each on a real server (tests/backends.py,
tests/s3.py)."""


@contextlib.contextmanager
def serve_process(home: Path, *options: str, log: Path, workers: int = 1) -> Iterator[str]:
    """`hub --home HOME serve --port PORT --workers N OPTIONS...` on a free port, until each
    of its ``workers`` processes is up; yields its URL. Stopped with SIGTERM (uvicorn's
    parent then stops its workers), killed with its process group if that does not do."""
    import signal
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    import psutil

    root = Path(__file__).resolve().parents[3]
    port = free_port()
    command = [sys.executable, "-m", "cli.main", "--home", str(home), "serve"]
    command += ["--port", str(port), "--workers", str(workers), *options]
    with open(log, "wb") as out:
        server = subprocess.Popen(
            command,
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"hub serve did not start:\n{log.read_text()}"
            try:
                urllib.request.urlopen(f"{url}/api/models/team/none", timeout=5)
            except urllib.error.HTTPError:
                break  # any answer: a worker is serving
            except OSError:
                time.sleep(0.1)
        if workers > 1:
            # Every worker spawned; the others import the app a little later than the first.
            children = psutil.Process(server.pid).children()
            spawned = [c for c in children if "resource_tracker" not in " ".join(c.cmdline())]
            assert len(spawned) == workers, log.read_text()
            time.sleep(2.0)
        yield url
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


@pytest.fixture(params=DEPLOYMENTS)
def deployment(request) -> dict[str, str]:
    """``create_app`` options of the test's deployment: none (embedded), or a fresh
    PostgreSQL database and S3 bucket (team). Tests that take it run once with each."""
    if request.param == "embedded":
        return {}
    return {
        "db": request.getfixturevalue("pg_url"),
        "store": request.getfixturevalue("s3_store_url"),
    }


@pytest.fixture
def team_server(hub_home, pg_url, s3_store_url):
    """A server over PostgreSQL + S3 (downloads redirected to presigned URLs)."""
    with start_server(hub_home, db=pg_url, store=s3_store_url) as server:
        yield server


@pytest.fixture
def live_server(request, hub_home):
    """A server over the test's ``hub_home``: embedded, or the ``deployment`` of a test that
    uses that fixture (a module opts in with ``pytest.mark.usefixtures("deployment")``)."""
    options = request.getfixturevalue("deployment") if "deployment" in request.fixturenames else {}
    with start_server(hub_home, **options) as server:
        yield server


def _local_tmp(store: Any) -> Any:
    """The folder of in-flight writes on this machine: the local store's ``tmp/``, or the
    cache's of a remote store (its spooled writes and materialized folders)."""
    return getattr(store, "cache", store).tmp


def _multipart_uploads(store: Any) -> list[dict[str, Any]]:
    if not hasattr(store, "client"):
        return []
    return list(store.uploads_in_progress())


def store_leftovers(store: Any) -> list[str]:
    """What writes under way or interrupted hold in ``store`` besides its blobs: the names in
    the local ``tmp/`` (the cache's for S3) and, for S3, the keys of multipart uploads not
    completed nor aborted. ``[]`` when every write has finished one way or the other."""
    tmp = _local_tmp(store)
    found = sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []
    return found + sorted(f"multipart:{u['Key']}" for u in _multipart_uploads(store))


def in_flight_bytes(store: Any) -> int:
    """The bytes ``store`` has received of writes not yet published: temp files in the local
    ``tmp/`` (the cache's for S3), plus for S3 the parts of multipart uploads under way."""
    tmp = _local_tmp(store)
    total = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file()) if tmp.is_dir() else 0
    for upload in _multipart_uploads(store):
        parts = store.client.list_parts(
            Bucket=store.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
        )
        total += sum(int(part["Size"]) for part in parts.get("Parts", ()))
    return total


def crashed_write(store: Any, size: int) -> None:
    """What a writer killed mid-write leaves behind and nobody holds: ``size`` bytes in a
    temp file of the local ``tmp/`` (the cache's for S3), for ``gc`` to remove."""
    tmp = _local_tmp(store)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "0123abcd.incomplete").write_bytes(b"x" * size)


def count_rows(reg: Any, table: str) -> int:
    """How many rows ``table`` of ``reg``'s catalog holds, SQLite index or PostgreSQL."""
    sql = f"SELECT count(*) FROM {table}"
    if reg.db:
        import psycopg

        with psycopg.connect(reg.db) as conn:
            found = conn.execute(sql).fetchone()
    else:
        found = reg.catalog.conn.execute(sql).fetchone()
    return int(found[0])


def overwrite_blob(store: Any, digest: str, data: bytes) -> None:
    """Replace the bytes stored under ``digest`` with ``data`` behind the store's back (a
    disk's or a bucket's rot, for ``verify`` to find): the file in the folder, or the S3
    object (and its copy in the local cache, if any)."""
    if hasattr(store, "client"):
        store.client.put_object(Bucket=store.bucket, Key=store.key(digest), Body=data)
        store = store.cache
        if not store.has(digest):
            return
    blob = store.path(digest)
    blob.chmod(0o644)
    blob.write_bytes(data)


@pytest.fixture
def tokens(live_server):
    """A writer of `team`, a reader of `team`, and a reader of another namespace."""
    from hub.tokens import create_token

    with live_server.registry() as reg:
        return {
            "writer": create_token(reg, "writer", read=[], write=["team"]),
            "reader": create_token(reg, "reader", read=["team"], write=[]),
            "other": create_token(reg, "other", read=["elsewhere"], write=[]),
        }


def hf_env(server: LiveServer, token: str, tmp_path: Path, *, xet: bool) -> dict[str, str]:
    """The environment of an unmodified huggingface_hub client pointed at ``server``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=server.url, HF_TOKEN=token, HF_HOME=str(tmp_path / "hf-home"))
    if not xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    return env


def lfs_upload_href(url: str, token: str, data: bytes) -> str:
    """The signed upload URL a Git LFS batch answer of the server ``url`` gives for ``data``."""
    import hashlib
    import json
    import urllib.request

    oid = hashlib.sha256(data).hexdigest()
    batch = urllib.request.Request(
        f"{url}/team/lfs.git/info/lfs/objects/batch",
        data=json.dumps(
            {"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}
        ).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(batch) as response:
        return str(json.loads(response.read())["objects"][0]["actions"]["upload"]["href"])
