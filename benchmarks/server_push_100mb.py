"""A 100 MB push through `hub serve`: what the server writes, and how long the commit takes.

The adapter is a real PEFT-format LoRA (rank 100, fp32, 3 Llama-7B layers: 94 MB). Each round,
against a fresh registry behind a real `hub serve` on loopback, the project's HTTP client
(``RemoteRegistry.push``):

1. pushes the folder to ``bench/a``: the blob is uploaded (``PUT /blobs``), then committed;
2. pushes the same folder to ``bench/b``: the server has every blob already, so nothing is
   uploaded and the commit references stored blobs only.

Measured: each push's wall time and the bytes the server process wrote meanwhile
(``/proc/PID/io`` ``wchar``: every ``write()``, to files and sockets). The peer, in the same
round, is ``sha256sum F && cp F DST`` of the same file. With ``--before DIR`` (a checkout of
an older commit, e.g. ``git worktree add /tmp/before main``) a second server runs that code
side by side, so the table compares the two versions on the same disk at the same time.

Usage: python benchmarks/server_push_100mb.py [--rounds 3] [--before DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._util import WORK, median, table
from benchmarks.push_1gb import build_adapter
from hub import Registry
from hub.remote import RemoteRegistry
from hub.tokens import create_token

ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _written(pid: int) -> int:
    """Bytes process ``pid`` has passed to write() so far."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError(f"no wchar in /proc/{pid}/io")


def _round(code: Path, home: Path, folder: Path) -> dict[str, tuple[float, int]]:
    """One fresh registry served by the code in ``code``: (seconds, bytes the server wrote)
    for the first push and for the push of the same files to another repository."""
    shutil.rmtree(home, ignore_errors=True)
    with Registry(home) as reg:
        secret = create_token(reg, "bench", read=["*"], write=["*"])
    port = _port()
    env = {**os.environ, "HUB_HOME": str(home), "HUB_DISABLE_PROGRESS": "1", "PYTHONPATH": ""}
    server = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--port", str(port)],
        env=env,
        cwd=code,  # `-m cli.main` imports the hub of this checkout
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/openapi.json", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        client = RemoteRegistry(url, secret)
        out = {}
        for label, repo in (("upload + commit", "bench/a"), ("commit of stored blobs", "bench/b")):
            before, start = _written(server.pid), time.perf_counter()
            client.push(folder, name=repo)
            out[label] = (time.perf_counter() - start, _written(server.pid) - before)
        return out
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path, help="a checkout of the code to compare with")
    args = parser.parse_args()
    work = WORK / "serverpush100mb"
    folder = build_adapter(work / "adapter", layers=3)
    weights = folder / "adapter_model.safetensors"
    size = weights.stat().st_size
    codes = {"this checkout": ROOT}
    if args.before is not None:
        codes = {f"before ({args.before})": args.before.resolve(), **codes}
    peer: list[float] = []
    runs: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for _ in range(args.rounds):
        dst = work / "copy.safetensors"
        start = time.perf_counter()
        subprocess.run(["sha256sum", str(weights)], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cp", str(weights), str(dst)], check=True)
        peer.append(time.perf_counter() - start)
        dst.unlink()
        for name, code in codes.items():
            for label, result in _round(code, work / "home", folder).items():
                runs.setdefault((name, label), []).append(result)
    base = median(peer)
    rows = [["peer", "sha256sum F && cp F DST", f"{base:.2f} s", "1.00x", "-"]]
    for (name, label), results in runs.items():
        seconds = median([r[0] for r in results])
        written = median([r[1] for r in results])
        rows.append(
            [name, label, f"{seconds:.2f} s", f"{seconds / base:.2f}x", f"{written / 1e6:.1f} MB"]
        )
    print(f"file: {size / 1e6:.0f} MB, median of {args.rounds} rounds")
    print(table(["server", "push", "wall time", "time vs peer", "server wrote"], rows))


if __name__ == "__main__":
    main()
