"""The web page on a registry of 10,000 versions, side by side with `hub ls --json`.

Uses benchmarks/ls_10k.py's registry (built once, cached), starts a real `hub serve` on
127.0.0.1 (a subprocess) and times each page as a browser asks for it, logged in with a token
that reads five of the ten namespaces (so the namespace filter is in every query). Reports the
server's own time (the `Server-Timing` header: from the route's start to the rendered page),
the wall time seen by the client, and the page's bytes; `hub ls --json` and
`hub show --json` run as a user runs them (a fresh process each time).

Usage: python benchmarks/ui_pages.py [--runs 21]
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._util import WORK, median, run_cmd, table
from benchmarks.ls_10k import HUB, build

ADAPTER = "/ui/adapters/team-3/adapter-503"
PAGES = {
    "search, first page (newest first)": "/ui/",
    "search: sql, rank <=16, best accuracy first":
        "/ui/?q=sql&rank=%3C%3D16&sort=metric%3Aaccuracy",
    "search: method lora, task chat, page 5": "/ui/?method=lora&task=chat&page=5",
    "adapter page team-3/adapter-503": ADAPTER,
    "safetensors header preview": f"{ADAPTER}/header?path=adapter_model.safetensors",
    "diff v9 -> v10": f"{ADAPTER}/diff",
    "base model page org/base-7b": "/ui/base?name=org%2Fbase-7b",
}  # fmt: skip
TIMING = re.compile(r"app;dur=([0-9.]+)")


def _get(conn: http.client.HTTPConnection, path: str, cookie: str) -> tuple[float, float, int]:
    """(server ms, wall ms, bytes) of one page."""
    start = time.perf_counter()
    conn.request("GET", path, headers={"Cookie": f"hub_ui_token={cookie}", "Accept": "text/html"})
    response = conn.getresponse()
    body = response.read()
    wall = (time.perf_counter() - start) * 1000
    if response.status != 200:
        raise SystemExit(f"{path}: HTTP {response.status}: {body[:300]!r}")
    match = TIMING.search(response.getheader("Server-Timing") or "")
    if match is None:
        raise SystemExit(f"{path}: no Server-Timing header")
    return float(match.group(1)), wall, len(body)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    home = WORK / "ls10k" / "home"
    build(home, args.versions)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HUB_HOME": str(home), "PYTHONPATH": str(root)}

    from hub import Registry
    from hub.tokens import create_token

    with Registry(home) as reg:
        token = create_token(reg, "ui-bench", read=[f"team-{i}" for i in range(5)], write=[])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [*HUB, "serve", "--port", str(port)], env=env, cwd=root, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request("GET", "/ui/static/ui.css")
                conn.getresponse().read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("hub serve did not start") from None
                time.sleep(0.2)
        rows = []
        for label, path in PAGES.items():
            for _ in range(3):  # warm: page cache, template compilation, first imports
                _get(conn, path, token)
            samples = [_get(conn, path, token) for _ in range(args.runs)]
            server_ms = median([s[0] for s in samples])
            wall_ms = median([s[1] for s in samples])
            rows.append([label, f"{server_ms:.1f} ms", f"{wall_ms:.1f} ms",
                         f"{samples[-1][2] / 1024:.1f} KB"])  # fmt: skip
        conn.close()
    finally:
        server.terminate()
        server.wait(timeout=30)

    cli_runs = max(3, args.runs // 3)
    for label, cmd in {
        "`hub ls --json` (1,000 latest cards, fresh process)": [*HUB, "ls", "--json"],
        "`hub show team-3/adapter-503 --json` (fresh process)": [
            *HUB, "show", "team-3/adapter-503", "--json",
        ],
    }.items():  # fmt: skip
        run_cmd(cmd, env=env, cwd=root)
        wall = median([run_cmd(cmd, env=env, cwd=root) for _ in range(cli_runs)]) * 1000
        rows.append([label, "-", f"{wall:.0f} ms", "-"])
    print(f"{args.versions:,} versions; median of {args.runs} page loads, {cli_runs} CLI runs")
    print(table(["page", "server time", "wall (client)", "bytes"], rows))


if __name__ == "__main__":
    main()
