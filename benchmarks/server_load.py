"""Load on a real `hub serve` over loopback: 32 clients pulling and 4 pushing, for 30 s.

The server runs as its own process (`hub serve`); clients are threads of this script using
the project's HTTP client. At the end every push must be a visible version with the right
bytes, and no request may have failed. Prints throughput and p50/p99 latency per operation.

Usage: python benchmarks/server_load.py [--seconds 30] [--pullers 32] [--pushers 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._util import table
from hub import Registry
from hub.remote import RemoteRegistry
from hub.tokens import create_token
from tests.factories import make_adapter, make_base


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--pullers", type=int, default=32)
    parser.add_argument("--pushers", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hub-load-"))
    base = make_base(work / "base")
    adapter = make_adapter("lora", work / "adapter", base)
    home = work / "home"
    with Registry(home) as reg:
        reg.push(adapter, name="team/seed")
        token = create_token(reg, "load", read=["*"], write=["*"])
    port = _port()
    env = {**os.environ, "HUB_HOME": str(home)}
    server = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--port", str(port)],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{url}/openapi.json", timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    latencies: dict[str, list[float]] = {"pull": [], "push": []}
    errors: list[str] = []
    pushed: list[tuple[str, str]] = []  # (repo, README text)
    lock = threading.Lock()
    stop = time.monotonic() + args.seconds

    def puller(index: int) -> None:
        client = RemoteRegistry(url, token)
        dest_root = work / f"pull-{index}"
        n = 0
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                client.pull("team/seed", dest_root / str(n))
            except Exception as error:  # counted, reported
                with lock:
                    errors.append(f"pull: {error}")
            else:
                with lock:
                    latencies["pull"].append(time.perf_counter() - start)
            shutil.rmtree(dest_root / str(n), ignore_errors=True)
            n += 1

    def pusher(index: int) -> None:
        client = RemoteRegistry(url, token)
        n = 0
        while time.monotonic() < stop:
            folder = work / f"push-{index}-{n}"
            shutil.copytree(adapter, folder)
            text = f"pusher {index} version {n}"
            (folder / "README.md").write_text(text)
            start = time.perf_counter()
            try:
                client.push(folder, name=f"team/pushed-{index}")
            except Exception as error:
                with lock:
                    errors.append(f"push: {error}")
            else:
                with lock:
                    latencies["push"].append(time.perf_counter() - start)
                    pushed.append((f"team/pushed-{index}", text))
            shutil.rmtree(folder)
            n += 1

    threads = [threading.Thread(target=puller, args=(i,)) for i in range(args.pullers)]
    threads += [threading.Thread(target=pusher, args=(i,)) for i in range(args.pushers)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    server.terminate()
    server.wait()

    with Registry(home) as reg:
        stored = {
            (card.repo, reg.blob_path(card, "README.md").read_text())
            for repo in {r for r, _ in pushed}
            for card in reg.versions(repo)
        }
        lost = [p for p in pushed if p not in stored]
        healthy = reg.verify().healthy
    rows = []
    for op, values in latencies.items():
        values.sort()
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))] if values else 0.0
        rows.append(
            [
                op,
                len(values),
                f"{len(values) / elapsed:.1f}/s",
                f"{statistics.median(values) * 1000:.0f} ms" if values else "-",
                f"{p99 * 1000:.0f} ms",
            ]
        )
    print(f"{args.pullers} pullers + {args.pushers} pushers for {elapsed:.0f} s on loopback")
    print(table(["operation", "completed", "throughput", "p50", "p99"], rows))
    print(f"errors: {len(errors)}; pushed versions lost: {len(lost)}; registry healthy: {healthy}")
    shutil.rmtree(work, ignore_errors=True)
    if errors or lost or not healthy:
        print("\n".join(errors[:10]))
        sys.exit(1)


if __name__ == "__main__":
    main()
