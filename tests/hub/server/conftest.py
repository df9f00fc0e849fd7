"""A real `hub serve` app on 127.0.0.1 (uvicorn in a thread, random free port)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class LiveServer:
    url: str
    home: Path
    server: object


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def live_server(hub_home):
    import uvicorn

    from hub import Registry
    from hub.server import create_app

    Registry(hub_home).close()
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(hub_home), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield LiveServer(f"http://127.0.0.1:{port}", hub_home, server)
    server.should_exit = True
    thread.join(timeout=10)
