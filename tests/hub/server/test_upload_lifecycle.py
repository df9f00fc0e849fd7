"""A push to the server, from its uploads to its commit, with `hub gc` running beside it.

Uploads wait for their commit without `hub gc` taking them (hub/uploads.py states the rule),
stay private to their uploader, die with their token, and a commit carries every file it
lists or is refused. `hub gc` is the real CLI in its own process, against a real server, on
both deployments (SQLite + a folder, PostgreSQL + S3: ``deployment``)."""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest

from hub.blobstore.s3 import PART
from hub.maintenance import collect_garbage
from hub.remote import RemoteRegistry
from hub.tokens import create_token, revoke_token
from schemas import AdapterNotFound, HubError, InvalidArgument, RevisionNotFound
from tests.hub.server.live import (
    LiveServer,
    crashed_write,
    in_flight_bytes,
    lfs_upload_href,
    start_server,
    store_leftovers,
)

pytestmark = pytest.mark.usefixtures("deployment")
API = "/api/hub/v1"
MiB = 1024 * 1024


def hub(server: LiveServer, *args: object) -> subprocess.CompletedProcess[str]:
    """The `hub` CLI in its own process, on ``server``'s registry."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *server.hub_args(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def hub_gc(server: LiveServer) -> dict[str, int]:
    """`hub gc --json` in its own process, as an operator's cron job runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *server.hub_args(), "gc", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def with_notes(adapter: Path, dest: Path, text: str) -> Path:
    """The adapter plus a file in a subfolder, which a lost blob would silently drop."""
    shutil.copytree(adapter, dest)
    (dest / "notes").mkdir()
    (dest / "notes" / "extra.txt").write_text(text)
    return dest


def file_list(folder: Path) -> list[dict[str, object]]:
    return [
        {
            "path": p.relative_to(folder).as_posix(),
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            "size": p.stat().st_size,
        }
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]


def upload_all(remote: RemoteRegistry, folder: Path) -> list[dict[str, object]]:
    files = file_list(folder)
    for f in files:
        remote._upload(folder / str(f["path"]), str(f["sha256"]), int(str(f["size"])), "")
    return files


def http_status(url: str, token: str, method: str = "GET") -> int:
    request = urllib.request.Request(
        url, method=method, headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_gc_between_upload_and_commit_keeps_the_uploads(live_server, tokens, adapters, tmp_path):
    folder = with_notes(adapters("lora"), tmp_path / "a", "kept")
    remote = RemoteRegistry(live_server.url, tokens["writer"])
    files = upload_all(remote, folder)
    report = hub_gc(live_server)
    assert (report["blobs_removed"], report["uploads_kept"]) == (0, 4)
    card = remote._json("POST", f"{API}/adapters/team/a/versions", {"files": files})
    assert sorted(f["path"] for f in card["files"]) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "notes/extra.txt",
    ]
    with live_server.registry() as reg:
        assert reg.read_file(reg.show("team/a"), "notes/extra.txt") == b"kept"
        assert reg.verify().healthy


def test_uploads_past_the_grace_period_are_collected_and_the_commit_refused(
    live_server, tokens, adapters, tmp_path
):
    folder = with_notes(adapters("lora"), tmp_path / "a", "late")
    remote = RemoteRegistry(live_server.url, tokens["writer"])
    files = upload_all(remote, folder)
    with live_server.registry() as reg:
        report = collect_garbage(reg, upload_grace=timedelta(0))
        assert (report.blobs_removed, report.uploads_kept) == (4, 0)
    with pytest.raises(InvalidArgument) as info:
        remote._json("POST", f"{API}/adapters/team/a/versions", {"files": files})
    assert str(info.value) == (
        "blobs not uploaded yet: "
        + ", ".join(str(f["sha256"])[:12] for f in files)
        + " (send them with PUT /blobs/SHA256, then push again)"
    )
    with live_server.registry() as reg, pytest.raises(AdapterNotFound):
        reg.show("team/a")
    card, created = remote.push(folder, name="team/a")  # the client simply sends them again
    assert created and len(card.files) == 4


def test_gc_leaves_an_upload_in_flight_alone(live_server, tokens):
    # Over one S3 part: on S3 the upload under way is a multipart upload gc must not abort.
    data = bytes(range(256)) * ((PART + 4 * MiB) // 256)
    digest = hashlib.sha256(data).hexdigest()
    host, port = live_server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("PUT", f"{API}/blobs/{digest}")
    conn.putheader("Authorization", f"Bearer {tokens['writer']}")
    conn.putheader("Content-Length", str(len(data)))
    conn.endheaders()
    conn.send(data[: PART + 2 * MiB])
    with live_server.registry() as reg:
        deadline = time.monotonic() + 20
        while in_flight_bytes(reg.store) < PART:
            assert time.monotonic() < deadline, "the first part never reached the store"
            time.sleep(0.02)
        crashed_write(reg.store, 1000)  # a crashed writer's: nobody holds it
        report = hub_gc(live_server)
        assert (report["blobs_removed"], report["bytes_freed"]) == (0, 1000)
        assert in_flight_bytes(reg.store) >= PART  # the live upload untouched
        conn.send(data[PART + 2 * MiB :])
        response = conn.getresponse()
        assert response.status == 200, response.read()
        assert json.loads(response.read()) == {"sha256": digest, "size": len(data), "stored": True}
        conn.close()
        assert reg.store.read_bytes(digest) == data
        assert store_leftovers(reg.store) == []


def test_a_commit_never_drops_a_file_it_lists(live_server, tokens, adapters, tmp_path):
    folder = with_notes(adapters("lora"), tmp_path / "a", "x")
    (folder / ".hidden.txt").write_text("explicitly sent")
    remote = RemoteRegistry(live_server.url, tokens["writer"])
    files = upload_all(remote, folder)
    assert ".hidden.txt" in [f["path"] for f in files]
    with pytest.raises(InvalidArgument) as info:
        remote._json("POST", f"{API}/adapters/team/a/versions", {"files": files})
    # The push rule (hub.folders.refuse_ignored) refuses it by name, before anything is staged.
    assert str(info.value) == (
        "file '.hidden.txt' is hidden (or under __pycache__): hub never stores such files;"
        " leave it out of the upload"
    )
    with live_server.registry() as reg, pytest.raises(AdapterNotFound):
        reg.show("team/a")


def test_pushes_racing_a_gc_loop_lose_nothing(live_server, tokens, adapters, tmp_path):
    """The issue's stress: `hub gc` over and over while pushes come in, until gc has run at
    least 3 times and 12 pushes are done (bounded: 60 pushes at most)."""
    stop = threading.Event()
    runs = []

    def gc_loop() -> None:
        while not stop.is_set():
            runs.append(hub_gc(live_server))

    remote = RemoteRegistry(live_server.url, tokens["writer"])
    looper = threading.Thread(target=gc_loop)
    looper.start()
    pushes = 0
    try:
        while (pushes < 12 or len(runs) < 3) and pushes < 60:
            folder = with_notes(adapters("lora"), tmp_path / f"v{pushes}", f"push {pushes}")
            card, created = remote.push(folder, name="team/busy")
            assert created and len(card.files) == 4, card.files
            pushes += 1
    finally:
        stop.set()
        looper.join(timeout=120)
    assert len(runs) >= 3
    with live_server.registry() as reg:
        versions = reg.versions("team/busy")
        assert [v.version for v in versions] == list(range(1, pushes + 1))
        for i, card in enumerate(versions):
            assert reg.read_file(card, "notes/extra.txt") == f"push {i}".encode()
        assert reg.verify().healthy


def test_rm_takes_blobs_down_for_everyone_but_their_uploader(
    live_server, tokens, adapters, tmp_path
):
    folder = with_notes(adapters("lora"), tmp_path / "a", "secret notes")
    card, _ = RemoteRegistry(live_server.url, tokens["writer"]).push(folder, name="team/sql")
    notes = next(f for f in card.files if f.path == "notes/extra.txt")
    with live_server.registry() as reg:
        intruder = create_token(reg, "intruder", read=[], write=["evil"])
    blob_url = f"{live_server.url}{API}/blobs/{notes.sha256}"
    assert http_status(blob_url, tokens["reader"]) == 200
    RemoteRegistry(live_server.url, tokens["writer"]).remove("team/sql")
    # Unreferenced now: gone for a reader of the namespace and for any other writer.
    for token in (tokens["reader"], intruder):
        assert http_status(blob_url, token) == 404
        assert http_status(blob_url, token, "HEAD") == 404
    remote = RemoteRegistry(live_server.url, intruder)
    files = [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in card.files]
    with pytest.raises(InvalidArgument) as info:
        remote._json("POST", f"{API}/adapters/evil/copy/versions", {"files": files})
    assert str(info.value).startswith("blobs not uploaded yet: ")
    commit = json.dumps(
        {"key": "lfsFile", "value": {"path": "notes.txt", "algo": "sha256", "oid": notes.sha256}}
    )
    request = urllib.request.Request(
        f"{live_server.url}/api/models/evil/copy/commit/main",
        data=commit.encode(),
        headers={"Authorization": f"Bearer {intruder}"},
    )
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(request)
    assert http.value.headers["X-Error-Message"] == (
        f"LFS object {notes.sha256!r} for 'notes.txt' was not uploaded"
    )
    batch = remote._json(
        "POST",
        "/evil/copy.git/info/lfs/objects/batch",
        {"operation": "upload", "objects": [{"oid": notes.sha256, "size": notes.size}]},
    )
    assert "upload" in batch["objects"][0]["actions"]  # they must send the bytes
    # The uploader still may (it holds the bytes), until gc collects them.
    assert http_status(blob_url, tokens["writer"]) == 200


def test_a_pending_upload_is_private_to_its_uploader(live_server, tokens, adapters, tmp_path):
    folder = with_notes(adapters("lora"), tmp_path / "a", "not committed yet")
    uploader = RemoteRegistry(live_server.url, tokens["writer"])
    files = upload_all(uploader, folder)
    notes = next(f for f in files if f["path"] == "notes/extra.txt")
    with live_server.registry() as reg:
        colleague = create_token(reg, "colleague", read=[], write=["team"])
        intruder = create_token(reg, "intruder", read=[], write=["evil"])
    blob_url = f"{live_server.url}{API}/blobs/{notes['sha256']}"
    for token in (colleague, intruder, tokens["reader"]):
        assert http_status(blob_url, token) == 404
    with pytest.raises(InvalidArgument) as info:
        RemoteRegistry(live_server.url, intruder)._json(
            "POST", f"{API}/adapters/evil/copy/versions", {"files": files}
        )
    assert str(info.value).startswith("blobs not uploaded yet: ")
    assert http_status(blob_url, tokens["writer"]) == 200
    card = uploader._json("POST", f"{API}/adapters/team/a/versions", {"files": files})
    assert len(card["files"]) == 4
    assert http_status(blob_url, tokens["reader"]) == 200  # committed: readers of team see it


def test_lfs_upload_links_die_with_their_token(tmp_path, deployment):
    with start_server(tmp_path / "home", inline_upload_max=0, **deployment) as server:
        with server.registry() as reg:
            token = create_token(reg, "ci", read=[], write=["team"])
            token_id = token.split("_")[1]
        before = b"issued before the revocation"
        during = b"revoked mid-upload" * ((PART + 4 * MiB) // 18)  # over one S3 part
        early = lfs_upload_href(server.url, token, before)
        late = lfs_upload_href(server.url, token, during)
        # An upload under way when the token is revoked is not kept either.
        host, port = server.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.putrequest("PUT", late.removeprefix(server.url))
        conn.putheader("Content-Length", str(len(during)))
        conn.endheaders()
        # More than the server's write buffer and one S3 part (the server hands the store's
        # writer a MiB or more at a time): it reaches the store.
        conn.send(during[: PART + 2 * MiB])
        with server.registry() as reg:
            deadline = time.monotonic() + 20
            while in_flight_bytes(reg.store) == 0:
                assert time.monotonic() < deadline, "the upload never started"
                time.sleep(0.02)
            revoke_token(reg, token_id)
        conn.send(during[PART + 2 * MiB :])
        response = conn.getresponse()
        assert (response.status, response.getheader("X-Error-Message")) == (
            403,
            "the token this upload link was issued to is revoked",
        )
        conn.close()
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(early, data=before, method="PUT"))
        assert info.value.code == 403
        assert info.value.headers["X-Error-Message"] == (
            "the token this upload link was issued to is revoked"
        )
        with server.registry() as reg:
            for data in (before, during):
                assert not reg.store.has(hashlib.sha256(data).hexdigest())
            assert store_leftovers(reg.store) == []


def test_a_repo_created_empty_can_be_shown_pulled_and_removed(live_server, tokens, tmp_path):
    request = urllib.request.Request(  # what HfApi().create_repo sends
        f"{live_server.url}/api/repos/create",
        data=json.dumps({"name": "empty", "organization": "team", "type": "model"}).encode(),
        headers={"Authorization": f"Bearer {tokens['writer']}", "Content-Type": "application/json"},
    )
    urllib.request.urlopen(request).close()
    no_version = (
        "Error: team/empty has no version yet (it was created empty, over the Hugging Face"
        " API): push to it first, or remove it with `hub rm team/empty`\n"
    )
    shown = hub(live_server, "show", "team/empty")
    assert (shown.returncode, shown.stderr) == (1, no_version)
    pulled = hub(live_server, "pull", "team/empty", "-o", tmp_path / "out")
    assert (pulled.returncode, pulled.stderr) == (1, no_version)
    assert not (tmp_path / "out").exists()
    remote = RemoteRegistry(live_server.url, tokens["writer"])
    with pytest.raises(RevisionNotFound) as info:
        remote.show("team/empty")
    assert f"Error: {info.value}\n" == no_version
    assert remote.versions("team/empty") == []
    removed = hub(live_server, "rm", "team/empty")
    assert (removed.returncode, removed.stdout) == (
        0,
        "Removed team/empty (it had no version yet)\n",
    )
    with pytest.raises(AdapterNotFound):
        remote.show("team/empty")


def test_a_push_too_large_for_one_request_is_refused_before_uploading(
    live_server, tokens, adapters, tmp_path
):
    folder = tmp_path / "many"
    shutil.copytree(adapters("lora"), folder)
    long_dir = folder / "notes" / "/".join(c * 200 for c in "abc")
    long_dir.mkdir(parents=True)
    for i in range(1200):  # 1,203 files whose list is over the 1 MiB request limit
        (long_dir / f"{i:04d}-{'x' * 200}.txt").write_text(str(i))
    remote = RemoteRegistry(live_server.url, tokens["writer"])
    with pytest.raises(InvalidArgument) as info:
        remote.push(folder, name="team/many")
    message = str(info.value)
    assert message.startswith(f"{folder}: the list of its 1203 files takes ")
    assert message.endswith(
        " bytes, over the 1048576 bytes a push request may hold (leave out what the adapter"
        " does not need, or use shorter file names)"
    )
    assert int(message.split(" takes ")[1].split()[0]) > 1048576
    with live_server.registry() as reg:
        assert list(reg.store.iter_digests()) == []  # nothing was uploaded


def test_pull_force_swaps_the_folder_in_one_rename(live_server, tokens, adapters, tmp_path):
    """The old folder stays whole until the new one is in place: a program reading the
    adapter meanwhile never finds its config missing."""
    remote = RemoteRegistry(live_server.url, tokens["writer"])
    remote.push(with_notes(adapters("lora"), tmp_path / "first", "first"), name="team/a")
    second = with_notes(adapters("lora"), tmp_path / "second", "second")
    remote.push(second, name="team/a")
    dest = remote.pull("team/a@v1", tmp_path / "out" / "a")
    for i in range(3000):  # an old folder that takes a while to delete
        (dest / f"old-{i}.txt").write_text("old")
    config = dest / "adapter_config.json"
    checks, missing = [0], [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            checks[0] += 1
            if not config.is_file():
                missing[0] += 1

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        remote.pull("team/a", dest, force=True)
    finally:
        stop.set()
        watcher.join(timeout=60)
    assert checks[0] > 100 and missing[0] == 0
    assert sorted(_listing(dest)) == sorted(_listing(second))
    assert (dest / "notes" / "extra.txt").read_text() == "second"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["a"]  # nothing left aside


def _listing(folder: Path) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()]


def test_gc_report_counts_kept_uploads(live_server, tokens):
    data = b"one pending upload"
    digest = hashlib.sha256(data).hexdigest()
    request = urllib.request.Request(
        f"{live_server.url}{API}/blobs/{digest}",
        data=data,
        method="PUT",
        headers={"Authorization": f"Bearer {tokens['writer']}"},
    )
    urllib.request.urlopen(request).close()
    done = hub(live_server, "gc")
    assert (done.returncode, done.stdout) == (
        0,
        "Removed 0 blobs, freed 0 B; kept 1 upload awaiting its commit\n",
    )
    with pytest.raises(HubError):
        RemoteRegistry(live_server.url, tokens["reader"])._request("HEAD", f"{API}/blobs/{digest}")


def test_verify_counts_a_pending_upload_apart_from_orphans(live_server, tokens):
    data = b"an upload whose commit is still to come"
    digest = hashlib.sha256(data).hexdigest()
    request = urllib.request.Request(
        f"{live_server.url}{API}/blobs/{digest}",
        data=data,
        method="PUT",
        headers={"Authorization": f"Bearer {tokens['writer']}"},
    )
    urllib.request.urlopen(request).close()
    with live_server.registry() as reg:
        reg.store.put_bytes(b"a blob nothing references")
    done = hub(live_server, "verify")
    assert (done.returncode, done.stdout) == (
        0,
        "Checked 0 blobs (0 B), database: ok, orphan blobs: 1 (remove with `hub gc`),"
        " uploads awaiting their commit: 1\nRegistry is healthy.\n",
    )
    report = hub_gc(live_server)
    assert (report["blobs_removed"], report["uploads_kept"]) == (1, 1)
