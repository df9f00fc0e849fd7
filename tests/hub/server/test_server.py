"""The team hub driven by our CLI, our client and the unmodified huggingface_hub + PEFT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest
from click.testing import CliRunner

from cli.main import cli
from hub import Registry
from hub.remote import RemoteRegistry
from hub.tokens import create_token, revoke_token
from schemas import AdapterNotFound, AuthError, IncompatibleAdapters, InvalidArgument


def _run(*args, token=None, ok=True):
    env = {"HUB_TOKEN": token} if token else {}
    result = CliRunner(env=env).invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def tokens(live_server):
    with Registry(live_server.home) as reg:
        return {
            "writer": create_token(reg, "writer", read=[], write=["team"]),
            "reader": create_token(reg, "reader", read=["team"], write=[]),
            "other": create_token(reg, "other", read=["elsewhere"], write=[]),
        }


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
    with Registry(live_server.home) as reg:  # indexed like a local push
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
    with Registry(live_server.home) as reg:
        revoke_token(reg, tokens["reader"].split("_")[1])
    with pytest.raises(AuthError) as info:
        RemoteRegistry(live_server.url, tokens["reader"]).show("team/sql")
    assert str(info.value) == "invalid or revoked token"
    forged = tokens["reader"][:-4] + "AAAA"
    with pytest.raises(AuthError):
        RemoteRegistry(live_server.url, forged).show("team/sql")


def test_typed_errors_map_back(live_server, tokens):
    remote = RemoteRegistry(live_server.url, tokens["reader"])
    with Registry(live_server.home) as reg, pytest.raises(AdapterNotFound) as local:
        reg.show("team/nope")
    with pytest.raises(AdapterNotFound) as info:
        remote.show("team/nope")
    assert str(info.value) == str(local.value)


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
    with Registry(live_server.home) as reg:
        assert not reg.store.has(claimed)
        assert not reg.store.tmp.exists() or not any(reg.store.tmp.iterdir())
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


HF_CLIENT = """
import os, sys
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError
path = snapshot_download("team/sql")
print(sorted(os.listdir(path)))
print(HfApi().model_info("team/sql").sha)
from peft import PeftModel
from transformers import AutoModelForCausalLM
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[1]), "team/sql")
print(type(model).__name__)
try:
    snapshot_download("team/missing")
except RepositoryNotFoundError:
    print("RepositoryNotFoundError")
"""


@pytest.mark.parametrize("xet", ["disabled", "installed"])
def test_unmodified_huggingface_hub_and_peft_read_from_the_server(
    live_server, tokens, adapters, base_dir, tmp_path, xet
):
    card, _ = RemoteRegistry(live_server.url, tokens["writer"]).push(
        adapters("lora"), name="team/sql"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(
        HF_ENDPOINT=live_server.url, HF_TOKEN=tokens["reader"], HF_HOME=str(tmp_path / "hf-home")
    )
    if xet == "disabled":
        env["HF_HUB_DISABLE_XET"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", HF_CLIENT, str(base_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        "['README.md', 'adapter_config.json', 'adapter_model.safetensors']",
        card.commit,
        "PeftModelForCausalLM",
        "RepositoryNotFoundError",
    ]


HF_WRITER = """
import os, sys
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
api = HfApi()
api.create_repo("team/uploaded", exist_ok=True)
info = api.upload_folder(folder_path=sys.argv[1], repo_id="team/uploaded")
print(info.oid)
from peft import PeftModel
from transformers import AutoModelForCausalLM
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[2]), sys.argv[1])
model.push_to_hub("team/from-peft")
print("pushed")
try:
    api.upload_file(path_or_fileobj=b"{not json", path_in_repo="adapter_config.json",
                    repo_id="team/uploaded")
except HfHubHTTPError as error:
    print("refused:", error.response.status_code, error.server_message)
"""


def test_upload_folder_and_push_to_hub_are_indexed(
    live_server, tokens, adapters, base_dir, tmp_path
):
    lora = adapters("lora")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(
        HF_ENDPOINT=live_server.url,
        HF_TOKEN=tokens["writer"],
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_DISABLE_XET="1",
    )
    result = subprocess.run(
        [sys.executable, "-c", HF_WRITER, str(lora), str(base_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    with Registry(live_server.home) as reg:
        uploaded = reg.show("team/uploaded")
        assert lines[0] == uploaded.commit
        assert (uploaded.method, uploaded.rank) == ("lora", 8)
        for entry in uploaded.files:
            assert (
                reg.blob_path(uploaded, entry.path).read_bytes() == (lora / entry.path).read_bytes()
            )
        from_peft = reg.show("team/from-peft")
        assert (from_peft.method, from_peft.rank, from_peft.target_modules) == (
            "lora",
            8,
            ["q_proj", "v_proj"],
        )
        assert [c.version for c in reg.versions("team/uploaded")] == [
            1
        ]  # the bad commit left nothing
    assert lines[1] == "pushed"
    assert lines[2] == (
        "refused: 400 adapter_config.json is not valid JSON (line 1, column 2: Expecting"
        " property name enclosed in double quotes)"
    )


def test_hf_interop_push_and_pull_against_our_server_as_the_hub(
    live_server, tokens, adapters, tmp_path
):
    local_home = tmp_path / "local-home"
    with Registry(local_home) as reg:
        card = reg.push(adapters("lora"), name="mine/sql").card
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(
        HF_ENDPOINT=live_server.url,
        HF_TOKEN=tokens["writer"],
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_DISABLE_XET="1",
    )

    def hub(*args):
        return subprocess.run(
            [sys.executable, "-m", "cli.main", "--home", str(local_home), *map(str, args)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    pushed = hub("push", "mine/sql@v1", "--to", "hf://team/mirror")
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    with Registry(live_server.home) as served:
        mirror = served.show("team/mirror")
        assert (
            pushed.stdout
            == f"Pushed mine/sql@v1 to hf://team/mirror (commit {mirror.commit[:10]})\n"
        )
        assert {f.sha256 for f in mirror.files} == {f.sha256 for f in card.files}
    pulled = hub("pull", "hf://team/mirror", "-o", tmp_path / "from-hf")
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    for entry in card.files:
        assert (tmp_path / "from-hf" / entry.path).read_bytes() == (
            adapters("lora") / entry.path
        ).read_bytes()
    assert sorted(p.name for p in (tmp_path / "from-hf").iterdir()) == sorted(
        f.path for f in card.files
    )
    missing = hub("pull", "hf://team/absent", "-o", tmp_path / "nothing")
    assert missing.returncode == 1
    assert missing.stderr.startswith("Error: hf://team/absent: ")
    assert not (tmp_path / "nothing").exists()


def test_client_disconnect_mid_upload_leaves_nothing(live_server, tokens):
    import hashlib
    import socket
    import time

    data = os.urandom(200_000)
    digest = hashlib.sha256(data).hexdigest()
    host, port = live_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            f"PUT /api/hub/v1/blobs/{digest} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {tokens['writer']}\r\nContent-Length: {len(data)}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        sock.sendall(data[:50_000])  # then hang up mid-body
    with Registry(live_server.home) as reg:
        deadline = time.monotonic() + 10
        while reg.store.tmp.exists() and any(reg.store.tmp.iterdir()):
            assert time.monotonic() < deadline, "partial upload left behind"
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
