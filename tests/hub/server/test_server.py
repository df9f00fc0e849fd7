"""The team hub's native API, driven by our CLI and our client over a real server, on both
deployments (SQLite + a folder, PostgreSQL + S3: ``deployment``).

The Hugging Face protocol is tested in tests/e2e/test_hf_protocol.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from cli.main import cli
from hub.blobstore.s3 import PART
from hub.remote import RemoteRegistry
from hub.tokens import create_token, revoke_token
from schemas import (
    AdapterNotFound,
    AuthError,
    HubError,
    IncompatibleAdapters,
    InvalidArgument,
    InvalidName,
)
from tests.hub.server.live import in_flight_bytes, start_server, store_leftovers

pytestmark = pytest.mark.usefixtures("deployment")


def _run(*args, token=None, ok=True):
    env = {"HUB_TOKEN": token} if token else {}
    result = CliRunner(env=env).invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_push_ls_pull_through_the_server(live_server, tokens, adapters, tmp_path):
    lora = adapters("lora")
    pushed = _run(
        "push",
        lora,
        "--name",
        "team/sql",
        "--task",
        "sql",
        "--to",
        live_server.url,
        "--json",
        token=tokens["writer"],
    )
    card = json.loads(pushed.stdout)
    assert (card["method"], card["rank"], card["created"]) == ("lora", 8, True)
    with live_server.registry() as reg:  # indexed like a local push
        assert reg.show("team/sql").target_modules == ["q_proj", "v_proj"]
    listed = json.loads(
        _run("ls", "--from", live_server.url, "--json", token=tokens["reader"]).stdout
    )
    assert [c["repo"] for c in listed] == ["team/sql"]
    dest = tmp_path / "pulled"
    _run("pull", "team/sql@v1", "-o", dest, "--from", live_server.url, token=tokens["reader"])
    for path in lora.iterdir():
        assert (dest / path.name).read_bytes() == path.read_bytes()
    again = _run(
        "push", lora, "--name", "team/sql", "--to", live_server.url, token=tokens["writer"]
    )
    assert again.stdout.startswith("Unchanged: team/sql@v1")


def test_scopes_are_enforced(live_server, tokens, adapters):
    lora = adapters("lora")
    denied = _run(
        "push",
        lora,
        "--name",
        "team/sql",
        "--to",
        live_server.url,
        token=tokens["reader"],
        ok=False,
    )
    assert denied.stderr == "Error: token 'reader' may not write to any namespace\n"
    outside = _run(
        "push",
        lora,
        "--name",
        "other/sql",
        "--to",
        live_server.url,
        token=tokens["writer"],
        ok=False,
    )
    assert outside.stderr == "Error: token 'writer' may not write to namespace 'other'\n"
    _run("push", lora, "--name", "team/sql", "--to", live_server.url, token=tokens["writer"])
    anonymous = RemoteRegistry(live_server.url)
    with pytest.raises(AuthError) as info:
        anonymous.show("team/sql")
    assert str(info.value) == "authentication required: send 'Authorization: Bearer TOKEN'"
    with pytest.raises(AuthError) as info:
        RemoteRegistry(live_server.url, tokens["other"]).show("team/sql")
    assert str(info.value) == "token 'other' may not read namespace 'team'"
    assert RemoteRegistry(live_server.url, tokens["other"]).search_raw() == []
    with pytest.raises(AuthError):
        RemoteRegistry(live_server.url, tokens["other"]).pull("team/sql")
    with live_server.registry() as reg:
        revoke_token(reg, tokens["reader"].split("_")[1])
    with pytest.raises(AuthError) as info:
        RemoteRegistry(live_server.url, tokens["reader"]).show("team/sql")
    assert str(info.value) == "invalid or revoked token"
    forged = tokens["reader"][:-4] + "AAAA"
    with pytest.raises(AuthError):
        RemoteRegistry(live_server.url, forged).show("team/sql")


def test_typed_errors_map_back(live_server, tokens):
    remote = RemoteRegistry(live_server.url, tokens["reader"])
    with live_server.registry() as reg, pytest.raises(AdapterNotFound) as local:
        reg.show("team/nope")
    with pytest.raises(AdapterNotFound) as info:
        remote.show("team/nope")
    # The same message, but the server's registry folder is not disclosed.
    assert str(info.value) == str(local.value).replace(str(live_server.home), "$HUB_HOME")
    assert str(live_server.home) in str(local.value)


def _put(url, token, data):
    request = urllib.request.Request(
        url, data=data, method="PUT", headers={"Authorization": f"Bearer {token}"}
    )
    return urllib.request.urlopen(request)


def test_uploads_are_verified_and_paths_never_escape(live_server, tokens):
    import hashlib

    claimed = hashlib.sha256(b"the real bytes").hexdigest()
    with pytest.raises(urllib.error.HTTPError) as info:
        _put(f"{live_server.url}/api/hub/v1/blobs/{claimed}", tokens["writer"], b"other bytes")
    assert info.value.code == 400
    with live_server.registry() as reg:
        assert not reg.store.has(claimed)
        assert store_leftovers(reg.store) == []
    _put(f"{live_server.url}/api/hub/v1/blobs/{claimed}", tokens["writer"], b"the real bytes")
    remote = RemoteRegistry(live_server.url, tokens["writer"])
    for bad in ("../escape.txt", "/etc/passwd", "a/../../b", "a//b"):
        with pytest.raises(InvalidArgument) as err:
            remote._json(
                "POST",
                "/api/hub/v1/adapters/team/x/versions",
                {"files": [{"path": bad, "sha256": claimed, "size": 14}]},
            )
        assert str(err.value) == f"invalid file path {bad!r}: must stay inside the adapter folder"
    for url in ("/api/hub/v1/blobs/..%2F..%2Fetc%2Fpasswd", "/team/%2E%2E/resolve/main/x"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(live_server.url + url)
        assert info.value.code in (400, 401, 404)


def test_downloads_resume_with_range(live_server, tokens, adapters, tmp_path):
    lora = adapters("lora")
    remote = RemoteRegistry(live_server.url, tokens["writer"])
    card, _ = remote.push(lora, name="team/sql")
    weights = next(f for f in card.files if f.path == "adapter_model.safetensors")
    request = urllib.request.Request(
        f"{live_server.url}/api/hub/v1/blobs/{weights.sha256}",
        headers={"Authorization": f"Bearer {tokens['writer']}", "Range": "bytes=100-"},
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 206
        assert response.read() == (lora / "adapter_model.safetensors").read_bytes()[100:]
    # A download interrupted earlier left its first bytes behind: the pull completes them.
    partial = tmp_path / ".dest.hub-download"
    partial.mkdir()
    (partial / weights.sha256).write_bytes((lora / "adapter_model.safetensors").read_bytes()[:500])
    dest = remote.pull("team/sql", tmp_path / "dest")
    assert (dest / "adapter_model.safetensors").read_bytes() == (
        lora / "adapter_model.safetensors"
    ).read_bytes()
    assert not partial.exists()


def test_client_disconnect_mid_upload_leaves_nothing(live_server, tokens):
    import hashlib
    import socket
    import time

    # Over one S3 part: on S3 the upload under way is a multipart upload, which must go too.
    data = os.urandom(PART + 4 * 1024 * 1024)
    digest = hashlib.sha256(data).hexdigest()
    host, port = live_server.url.removeprefix("http://").split(":")
    with live_server.registry() as reg:
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                f"PUT /api/hub/v1/blobs/{digest} HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {tokens['writer']}\r\nContent-Length: {len(data)}\r\n"
                "Content-Type: application/octet-stream\r\n\r\n".encode()
            )
            sock.sendall(data[: PART + 2 * 1024 * 1024])  # a part reaches the store
            deadline = time.monotonic() + 20
            while in_flight_bytes(reg.store) == 0:
                assert time.monotonic() < deadline, "the upload never reached the store"
                time.sleep(0.05)
        # ... then hung up mid-body.
        deadline = time.monotonic() + 10
        while left := store_leftovers(reg.store):
            assert time.monotonic() < deadline, f"partial upload left behind: {left}"
            time.sleep(0.05)
        assert not reg.store.has(digest)


def test_compose_request_over_the_native_api(live_server, tokens, adapters):
    remote = RemoteRegistry(live_server.url, tokens["writer"])
    remote.push(adapters("lora"), name="team/a")
    remote.push(adapters("dora"), name="team/b")
    result = remote._json(
        "POST",
        "/api/hub/v1/compose",
        {"operator": "stack", "name": "team/ab", "inputs": ["team/a", "team/b"]},
    )
    assert (result["method"], result["variant"], result["created"]) == ("composite", "stack", True)
    groups = [{"layers": [0], "weights": [1.0, 0.5]}, {"layers": [1], "weights": [0.0, 0.5]}]
    grouped = remote._json(
        "POST",
        "/api/hub/v1/compose",
        {"operator": "linear", "name": "team/g", "inputs": ["team/a", "team/a"],
         "layer_groups": groups},
    )  # fmt: skip
    assert grouped["lineage"]["recipe"]["layer_groups"] == groups
    with pytest.raises(IncompatibleAdapters) as info:
        remote._json(
            "POST",
            "/api/hub/v1/compose",
            {"operator": "svd", "name": "team/x", "inputs": ["team/a", "team/b"], "rank": 2},
        )
    assert str(info.value).endswith("use `hub compose stack` or export it merged instead")
    with pytest.raises(AuthError):
        RemoteRegistry(live_server.url, tokens["reader"])._json(
            "POST",
            "/api/hub/v1/compose",
            {"operator": "stack", "name": "team/y", "inputs": ["team/a"]},
        )


def test_request_bodies_and_uploads_are_bounded(tmp_path, deployment):
    limits = {"max_upload_bytes": 1000, "max_commit_bytes": 5000}
    with start_server(tmp_path / "home", **limits, **deployment) as server:
        with server.registry() as reg:
            token = create_token(reg, "w", read=[], write=["team"])
        remote = RemoteRegistry(server.url, token)

        def chunked(total):  # no Content-Length: sent with chunked transfer encoding
            for _ in range(total // 65536):
                yield b" " * 65536

        with pytest.raises(InvalidArgument) as info:
            remote._request(
                "POST",
                "/api/hub/v1/adapters/team/x/versions",
                stream=chunked(2 * 1024 * 1024),
                headers={"Content-Type": "application/json"},
            )
        assert str(info.value) == "request body over 1048576 bytes"
        with pytest.raises(InvalidArgument) as info:
            remote._json("POST", "/api/repos/create", {"name": "team/x", "pad": "x" * 1100000})
        assert str(info.value) == "request body over 1048576 bytes"
        data = os.urandom(2000)
        digest = hashlib.sha256(data).hexdigest()
        with pytest.raises(InvalidArgument) as info:
            remote._request("PUT", f"/api/hub/v1/blobs/{digest}", body=data)
        assert str(info.value) == "upload over 1000 bytes"
        with pytest.raises(urllib.error.HTTPError) as http:
            urllib.request.urlopen(
                urllib.request.Request(
                    f"{server.url}/api/models/team/x/commit/main",
                    data=b'{"key": "header", "value": {}}\n' * 200,
                    headers={"Authorization": f"Bearer {token}"},
                )
            )
        assert (http.value.code, http.value.headers["X-Error-Message"]) == (
            413,
            "commit payload over 5000 bytes",
        )
        with server.registry() as reg:
            assert not reg.store.has(digest)
            assert store_leftovers(reg.store) == []
            assert not any((server.home / "tmp").iterdir())


def test_versions_aliases_and_removal_over_the_api(live_server, tokens, adapters, tmp_path):
    remote = RemoteRegistry(live_server.url, tokens["writer"])
    second = tmp_path / "second"
    shutil.copytree(adapters("lora"), second)
    (second / "README.md").write_text("second version")
    remote.push(adapters("lora"), name="team/sql")
    remote.push(second, name="team/sql")
    assert [c.version for c in remote.versions("team/sql")] == [1, 2]
    assert remote.tag("team/sql@v1", "prod").aliases == ["prod"]
    assert RemoteRegistry(live_server.url, tokens["reader"]).show("team/sql@prod").version == 1
    with live_server.registry() as reg, pytest.raises(InvalidName) as local:
        reg.tag("team/sql@v1", "v7")
    with pytest.raises(InvalidName) as info:
        remote.tag("team/sql@v1", "v7")
    assert str(info.value) == str(local.value)
    with pytest.raises(AuthError):
        RemoteRegistry(live_server.url, tokens["reader"]).remove("team/sql@v1")
    assert [c.version for c in remote.remove("team/sql@v1")] == [1]
    assert [c.version for c in remote.versions("team/sql")] == [2]
    assert [c.version for c in remote.remove("team/sql")] == [2]
    with pytest.raises(AdapterNotFound):
        remote.show("team/sql")


def test_knowing_a_digest_is_not_enough_to_copy_a_file(live_server, tokens, adapters):
    """Blobs are stored once for all namespaces: a push may use a stored blob only when the
    caller may read a version that has it, or sends the bytes themselves."""
    lora = adapters("lora")
    card, _ = RemoteRegistry(live_server.url, tokens["writer"]).push(lora, name="team/sql")
    weights = next(f for f in card.files if f.path == "adapter_model.safetensors")
    with live_server.registry() as reg:
        intruder = create_token(reg, "intruder", read=[], write=["evil"])
    remote = RemoteRegistry(live_server.url, intruder)
    with pytest.raises(HubError) as info:  # the same answer as for a blob that does not exist
        remote._request("HEAD", f"/api/hub/v1/blobs/{weights.sha256}")
    assert str(info.value) == "server answered 404: b''"
    files = [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in card.files]
    with pytest.raises(InvalidArgument) as info:
        remote._json("POST", "/api/hub/v1/adapters/evil/copy/versions", {"files": files})
    assert str(info.value).startswith("blobs not uploaded yet: ")
    commit = "".join(
        json.dumps({"key": "lfsFile", "value": {"path": f.path, "algo": "sha256", "oid": f.sha256}})
        + "\n"
        for f in card.files
    )
    request = urllib.request.Request(
        f"{live_server.url}/api/models/evil/copy/commit/main",
        data=commit.encode(),
        headers={"Authorization": f"Bearer {intruder}"},
    )
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(request)
    assert http.value.headers["X-Error-Message"] == (
        f"LFS object {card.files[0].sha256!r} for 'README.md' was not uploaded"
    )
    batch = remote._json(
        "POST",
        "/evil/copy.git/info/lfs/objects/batch",
        {"operation": "upload", "objects": [{"oid": weights.sha256, "size": weights.size}]},
    )
    assert "upload" in batch["objects"][0]["actions"]
    # Whoever holds the bytes may push them: identical content is still stored once.
    copy, created = remote.push(lora, name="evil/copy")
    assert created and {f.sha256 for f in copy.files} == {f.sha256 for f in card.files}
