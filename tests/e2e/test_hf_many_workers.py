"""`hub serve --workers 2` as a real process on 127.0.0.1, over the SQLite index and over
PostgreSQL, raced by unmodified huggingface_hub clients (several processes, several threads
each): they create one repository at once (``exist_ok``), preupload the same files and commit
to ``main``, each commit adding a file of its own. Whatever worker answers, the end state is
one: versions dense 1..N, each version one more file than the previous one, every file of
every commit in the head, no error. A commit naming a stale ``parent_commit`` gets the Hub's
412.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from hub import Registry
from hub.folders import adapter_files
from hub.maintenance import verify_store
from hub.tokens import create_token
from tests.hub.server.live import serve_process

WORKERS = 2
PROCESSES, THREADS = 4, 2
REPO = "team/raced"

RACER = """
import json, sys, threading, time
from pathlib import Path
from huggingface_hub import CommitOperationAdd, HfApi
repo, folder, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[5])
first, count = int(sys.argv[3]), int(sys.argv[4])
shared = [(p, (folder / p).read_bytes()) for p in sys.argv[6:]]
api = HfApi()
commits, errors = [], []

def client(i):
    try:
        api.create_repo(repo, exist_ok=True)
        ops = [CommitOperationAdd(p, data) for p, data in shared]
        ops.append(CommitOperationAdd(f"notes/client-{i}.txt", f"written by client {i}".encode()))
        api.preupload_lfs_files(repo, additions=ops)
        info = api.create_commit(repo, operations=ops, commit_message=f"client {i}")
        commits.append([i, info.oid])
    except Exception as error:
        errors.append(f"client {i}: {type(error).__name__}: {error}")

while not go.exists():
    time.sleep(0.005)
threads = [threading.Thread(target=client, args=(i,)) for i in range(first, first + count)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"commits": commits, "errors": errors}))
"""

STALE = """
import sys
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError
try:
    HfApi().create_commit(sys.argv[1], operations=[CommitOperationAdd("notes/late.txt", b"late")],
                          commit_message="late", parent_commit=sys.argv[2])
except HfHubHTTPError as error:
    print(error.response.status_code, error.response.headers.get("X-Error-Message"))
"""


def _env(url: str, token: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=url, HF_TOKEN=token, HF_HOME=str(home / "hf"), HF_HUB_DISABLE_XET="1")
    return env


def _range(n: int) -> list[str]:
    """The first client number and the count of the ``n``-th racing process."""
    return [str(n * THREADS), str(THREADS)]


def _race(url: str, token: str, home: Path, folder: Path, files: list[str]) -> list[dict]:
    go = home / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, REPO, str(folder), *_range(n), str(go), *files],
            env=_env(url, token, home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(PROCESSES)
    ]
    time.sleep(3.0)  # every client imported huggingface_hub and waits on the start line
    go.touch()
    results = []
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_clients_racing_two_workers_leave_one_consistent_history(db_url, adapters, tmp_path):
    home = tmp_path / "home"
    folder = adapters("lora")
    files = sorted(rel for rel, _ in adapter_files(folder))
    with Registry(home, db=db_url) as reg:
        token = create_token(reg, "racers", read=[], write=["team"])
    db_option = ["--db", db_url] if db_url else []
    with serve_process(home, *db_option, log=tmp_path / "serve.log", workers=WORKERS) as url:
        results = _race(url, token, home, folder, files)
        commits = {i: oid for result in results for i, oid in result["commits"]}
        assert [e for result in results for e in result["errors"]] == []
        assert sorted(commits) == list(range(PROCESSES * THREADS))
        with Registry(home, db=db_url) as reg:
            versions = [stored.card for stored in reg.catalog.versions(REPO)]
            v1 = versions[0]["commit"]
        stale = subprocess.run(
            [sys.executable, "-c", STALE, REPO, v1],
            env=_env(url, token, home),
            capture_output=True,
            text=True,
            timeout=120,
        )
    n = PROCESSES * THREADS
    assert [card["version"] for card in versions] == list(range(1, n + 1))
    assert sorted(card["commit"] for card in versions) == sorted(commits.values())
    for number, card in enumerate(versions, start=1):
        paths = sorted(f["path"] for f in card["files"])
        notes = [p for p in paths if p.startswith("notes/")]
        # Each commit applied on the one before it: nothing another client sent is dropped.
        assert len(notes) == number
        assert sorted(set(paths) - set(notes)) == files
    head = {f["path"] for f in versions[-1]["files"]}
    assert {f"notes/client-{i}.txt" for i in range(n)} <= head
    head_commit = versions[-1]["commit"]
    assert stale.stdout.strip() == (
        f"412 {REPO} moved on: parent commit {v1[:12]} is not the head {head_commit[:12]}"
        " (fetch the latest revision and commit again)"
    ), stale.stderr
    with Registry(home, db=db_url) as reg:
        assert reg.show(REPO).commit == head_commit  # the stale commit changed nothing
        assert verify_store(reg).healthy
