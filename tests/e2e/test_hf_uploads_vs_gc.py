"""Hugging Face uploads with `hub gc` running: the unmodified huggingface_hub client's commits
keep every file, whether the files went through Git LFS before the commit or inline in it,
on both deployments (SQLite + a folder, PostgreSQL + S3: ``deployment``)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import threading

import pytest

from hub.tokens import create_token
from tests.hub.server.live import hf_env, start_server
from tests.hub.server.test_upload_lifecycle import hub_gc, with_notes

pytestmark = pytest.mark.usefixtures("deployment")

PREUPLOAD_THEN_COMMIT = """
import sys
from huggingface_hub import CommitOperationAdd, HfApi
api = HfApi()
api.create_repo("team/lfs", exist_ok=True)
folder, paths = sys.argv[1], sys.argv[2:]
ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=f"{folder}/{p}") for p in paths]
api.preupload_lfs_files("team/lfs", additions=ops)
print("uploaded", flush=True)
sys.stdin.readline()
print(api.create_commit("team/lfs", operations=ops, commit_message="after gc").oid, flush=True)
"""


def test_gc_between_lfs_upload_and_commit_keeps_every_file(tmp_path, adapters, deployment):
    """Every file through Git LFS (inline limit 0, Xet off), `hub gc` after the uploads and
    before the commit: the commit holds all of them."""
    folder = with_notes(adapters("lora"), tmp_path / "a", "through LFS")
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    with start_server(tmp_path / "home", inline_upload_max=0, **deployment) as server:
        with server.registry() as reg:
            token = create_token(reg, "ci", read=[], write=["team"])
        client = subprocess.Popen(
            [sys.executable, "-c", PREUPLOAD_THEN_COMMIT, str(folder), *paths],
            env=hf_env(server, token, tmp_path, xet=False),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert client.stdout is not None and client.stdin is not None
            assert client.stdout.readline() == "uploaded\n", client.stderr
            report = hub_gc(server)
            assert (report["blobs_removed"], report["uploads_kept"]) == (0, len(paths))
            out, err = client.communicate("go\n", timeout=120)
        finally:
            client.kill()
        assert client.returncode == 0, err[-3000:]
        with server.registry() as reg:
            card = reg.show("team/lfs")
            assert out.strip() == card.commit
            assert {f.path: f.sha256 for f in card.files} == {
                p: hashlib.sha256((folder / p).read_bytes()).hexdigest() for p in paths
            }


UPLOAD_LOOP = """
import sys
from pathlib import Path
from huggingface_hub import HfApi
api = HfApi()
api.create_repo("team/busy", exist_ok=True)
folder, enough = Path(sys.argv[1]), Path(sys.argv[2])
i = 0
while (i < 8 or not enough.exists()) and i < 40:
    (folder / "notes" / "extra.txt").write_text(f"commit {i}")
    print(api.upload_folder(folder_path=folder, repo_id="team/busy").oid, flush=True)
    i += 1
"""


def test_upload_folder_racing_a_gc_loop_loses_nothing(live_server, tokens, adapters, tmp_path):
    """The issue's stress on the HF path (files inline in the commit, the default with
    hf_xet installed): commits while `hub gc` runs over and over, until gc has run 3 times
    and 8 commits are done (bounded: 40 commits at most)."""
    folder = with_notes(adapters("lora"), tmp_path / "a", "")
    enough = tmp_path / "gc-ran-enough"
    stop = threading.Event()
    runs = []

    def gc_loop() -> None:
        while not stop.is_set():
            runs.append(hub_gc(live_server))
            if len(runs) >= 3:
                enough.touch()

    looper = threading.Thread(target=gc_loop)
    looper.start()
    try:
        done = subprocess.run(
            [sys.executable, "-c", UPLOAD_LOOP, str(folder), str(enough)],
            env=hf_env(live_server, tokens["writer"], tmp_path, xet=True),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        stop.set()
        looper.join(timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(runs) >= 3
    with live_server.registry() as reg:
        versions = reg.versions("team/busy")
        assert [v.commit for v in versions] == done.stdout.split()
        for i, card in enumerate(versions):
            assert len(card.files) == 4, card.files
            assert reg.read_file(card, "notes/extra.txt") == f"commit {i}".encode()
        assert reg.verify().healthy
    shutil.rmtree(folder)
