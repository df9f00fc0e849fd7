"""Slow clients against a real `hub serve` on 127.0.0.1: the server's memory and connections.

Opens ``--connections`` raw sockets that each send the headers of a 1 MiB push without a
token and ``--sent`` KiB of its body, then nothing; then as many idle sockets that send
nothing. Prints the server's resident memory (/proc) before, while they are open and after,
and how many connections the server still holds after ``--wait`` seconds.

Usage: python benchmarks/slow_clients.py [--connections 400] [--sent 256] [--wait 40]
                                         [--client-timeout 30]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._util import table
from tests.hub.server.test_slow_clients import _answers, _open_slow, _request_head, rss_mib, serve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=400)
    parser.add_argument("--sent", type=int, default=256, help="KiB of body each one sends")
    parser.add_argument("--wait", type=float, default=40.0)
    parser.add_argument("--client-timeout", default="30")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="hub-slow-")) / "home"
    with serve(home, "--client-timeout", args.client_timeout) as (port, process):
        time.sleep(1)
        before = rss_mib(process.pid)
        head = _request_head("/api/hub/v1/adapters/team/x/versions", 1024 * 1024)
        start = time.monotonic()
        slow = _open_slow(port, head, b" " * (args.sent * 1024), args.connections)
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(args.connections)]
        time.sleep(1)
        during = rss_mib(process.pid)
        answers = Counter(_answers(slow + idle, within=args.wait))
        after = rss_mib(process.pid)
        took = time.monotonic() - start
    print(
        table(
            ["server RSS before", "with the connections open", "after", "answers", "within"],
            [
                [
                    f"{before:.0f} MiB",
                    f"{during:.0f} MiB",
                    f"{after:.0f} MiB",
                    ", ".join(f"{k}: {v}" for k, v in sorted(answers.items())),
                    f"{took:.0f} s",
                ]
            ],
        )
    )


if __name__ == "__main__":
    main()
