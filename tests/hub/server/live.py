"""A real `hub serve` app on 127.0.0.1 (uvicorn in a thread, random free port), and tokens.

Shared by tests/hub/server and tests/e2e: ``start_server(home, **create_app_options)``
yields a running server; the ``live_server`` fixture is one over the test's ``hub_home``.
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
def live_server(hub_home):
    with start_server(hub_home) as server:
        yield server


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
