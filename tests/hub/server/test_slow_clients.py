"""Slow and unauthenticated clients cannot hold the server's memory or connections.

A real `hub serve` process on 127.0.0.1, raw sockets (bounded in number and time), and the
server's resident memory read from /proc.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub import Registry
from hub.tokens import create_token
from tests.hub.server.live import free_port

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid``, in MiB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@contextlib.contextmanager
def serve(home: Path, *options: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`hub serve` as its own process on a free loopback port; yields (port, process)."""
    Registry(home).close()
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--port", str(port), *options],
        env={**os.environ, "HUB_HOME": str(home), "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=1).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.1)
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=20)


def _request_head(path: str, length: int, token: str | None = None, method: str = "POST") -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {length}",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _open_slow(port: int, head: bytes, body: bytes, count: int) -> list[socket.socket]:
    """``count`` connections that send ``head`` and what of ``body`` the server takes within
    a moment, then nothing more."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.settimeout(0.05)
        with contextlib.suppress(TimeoutError, OSError):
            sock.sendall(head + body)
        socks.append(sock)
    return socks


def _answers(socks: list[socket.socket], within: float) -> list[str]:
    """Per connection: the status line the server sent, then " (closed)" if it closed the
    connection within ``within`` seconds or " (open)"; no status line reads "-"."""
    received = {sock: b"" for sock in socks}
    closed: set[socket.socket] = set()
    deadline = time.monotonic() + within
    while len(closed) < len(socks) and time.monotonic() < deadline:
        pending = [s for s in socks if s not in closed]
        readable, _, _ = select.select(pending, [], [], 0.2)
        for sock in readable:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                data = b""
            if data:
                received[sock] += data
            else:
                closed.add(sock)
    results = []
    for sock in socks:
        status = received[sock].split(b"\r\n", 1)[0].decode(errors="replace") or "-"
        results.append(status + (" (closed)" if sock in closed else " (open)"))
        sock.close()
    return results


def test_slow_bodies_without_a_token_hold_neither_memory_nor_connections(tmp_path):
    # Admitted requests hold their slot until the timeout: longer than opening 400 sockets.
    with serve(tmp_path / "home", "--client-timeout", "5", "--max-anonymous", "32") as (port, proc):
        time.sleep(0.5)
        before = rss_mib(proc.pid)
        head = _request_head("/api/hub/v1/adapters/team/x/versions", 1024 * 1024)
        socks = _open_slow(port, head, b" " * (256 * 1024), 400)
        time.sleep(0.5)
        during = rss_mib(proc.pid)
        answers = _answers(socks, within=5 + 8)
    assert during - before < 40, f"server grew from {before:.0f} to {during:.0f} MiB"
    counts = Counter(answers)
    assert set(counts) <= {
        "HTTP/1.1 401 Unauthorized (closed)",  # drained (never kept) within the deadline
        "HTTP/1.1 408 Request Timeout (closed)",
        "HTTP/1.1 429 Too Many Requests (closed)",  # over --max-anonymous: nothing read
    }, counts
    assert counts["HTTP/1.1 429 Too Many Requests (closed)"] >= 400 - 32


def test_slow_bodies_with_a_token_time_out(tmp_path):
    home = tmp_path / "home"
    with Registry(home) as reg:
        token = create_token(reg, "w", read=[], write=["team"])
    with serve(home, "--client-timeout", "2") as (port, _):
        json_head = _request_head("/api/hub/v1/adapters/team/x/versions", 1000, token)
        slow_json = _open_slow(port, json_head, b'{"files": [', 10)
        digest = hashlib.sha256(b"x" * 1000).hexdigest()
        upload_head = _request_head(f"/api/hub/v1/blobs/{digest}", 1000, token, method="PUT")
        slow_upload = _open_slow(port, upload_head, b"x" * 10, 10)
        start = time.monotonic()
        answers = _answers(slow_json + slow_upload, within=2 + 4)
        took = time.monotonic() - start
    assert answers == ["HTTP/1.1 408 Request Timeout (closed)"] * 20
    assert 1.5 < took < 6
    with Registry(home) as reg:  # the stalled uploads left nothing
        assert not reg.store.has(digest)
        assert not any(reg.store.tmp.iterdir())


def test_idle_and_trickling_connections_are_closed(tmp_path):
    with serve(tmp_path / "home", "--client-timeout", "2") as (port, _):
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(50)]
        trickling = socket.create_connection(("127.0.0.1", port), timeout=5)
        trickling.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        start = time.monotonic()
        closed_after = None
        while time.monotonic() - start < 10:  # one header line every 0.2 s: never complete
            try:
                trickling.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed_after = time.monotonic() - start
                break
            readable, _, _ = select.select([trickling], [], [], 0.2)
            try:
                ended = bool(readable) and not trickling.recv(1024)
            except OSError:  # closed with a reset (unread bytes were pending): closed all the same
                ended = True
            if ended:
                closed_after = time.monotonic() - start
                break
        trickling.close()
        answers = _answers(idle, within=2)
    assert closed_after is not None and 1.5 < closed_after < 4, closed_after
    assert answers == ["- (closed)"] * 50
