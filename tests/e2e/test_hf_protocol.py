"""The Hugging Face Hub protocol, driven by the unmodified huggingface_hub client and PEFT.

Each client runs in its own process with ``HF_ENDPOINT`` pointed at a real `hub serve` on
127.0.0.1, once with hf_xet installed (the client's default) and once with Xet disabled, on
both deployments (SQLite + a folder, PostgreSQL + S3: ``deployment``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from hub import Registry
from hub.remote import RemoteRegistry
from hub.tokens import create_token
from tests.hub.server.live import hf_env, start_server

pytestmark = pytest.mark.usefixtures("deployment")
XET = [pytest.param(False, id="xet-disabled"), pytest.param(True, id="xet-installed")]


def _client(script: str, *args: object, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _need_xet(xet: bool) -> None:
    if xet and importlib.util.find_spec("hf_xet") is None:
        pytest.skip("hf_xet is not installed")


READER = """
import os, sys
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
path = snapshot_download("team/sql")
print(sorted(os.listdir(path)))
print(HfApi().model_info("team/sql").sha)
from peft import PeftModel
from transformers import AutoModelForCausalLM
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[1]), "team/sql")
print(type(model).__name__)
for missing in (lambda: snapshot_download("team/missing"),
                lambda: HfApi().hf_hub_download("team/sql", "nope.txt")):
    try:
        missing()
    except (RepositoryNotFoundError, EntryNotFoundError) as error:
        print(type(error).__name__)
"""


@pytest.mark.parametrize("xet", XET)
def test_snapshot_download_and_peft_from_pretrained(
    live_server, tokens, adapters, base_dir, tmp_path, xet
):
    _need_xet(xet)
    card, _ = RemoteRegistry(live_server.url, tokens["writer"]).push(
        adapters("lora"), name="team/sql"
    )
    result = _client(READER, base_dir, env=hf_env(live_server, tokens["reader"], tmp_path, xet=xet))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        "['README.md', 'adapter_config.json', 'adapter_model.safetensors']",
        card.commit,
        "PeftModelForCausalLM",
        "RepositoryNotFoundError",
        "RemoteEntryNotFoundError",
    ]


WRITER = """
import sys
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError
api = HfApi()
api.create_repo("team/uploaded", exist_ok=True)
first = api.upload_folder(folder_path=sys.argv[1], repo_id="team/uploaded")
print(first.oid)
big = bytes(range(256)) * 12_000  # 3 MB inline: one NDJSON line far over 1 MiB
print(api.upload_file(path_or_fileobj=big, path_in_repo="extra/big.bin",
                      repo_id="team/uploaded").oid)
print(sorted(api.list_repo_files("team/uploaded")))
from peft import PeftModel
from transformers import AutoModelForCausalLM
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[2]), sys.argv[1])
model.push_to_hub("team/from-peft")
print("pushed")
for attempt in (
    lambda: api.upload_file(path_or_fileobj=b"{not json", path_in_repo="adapter_config.json",
                            repo_id="team/uploaded"),
    lambda: api.create_commit("team/uploaded", [CommitOperationAdd("notes.txt", b"x")],
                              commit_message="stale", parent_commit=first.oid),
):
    try:
        attempt()
    except HfHubHTTPError as error:
        print("refused:", error.response.status_code, error.server_message)
"""


@pytest.mark.parametrize("xet", XET)
def test_upload_folder_and_push_to_hub_are_indexed(
    live_server, tokens, adapters, base_dir, tmp_path, xet
):
    _need_xet(xet)
    lora = adapters("lora")
    env = hf_env(live_server, tokens["writer"], tmp_path, xet=xet)
    result = _client(WRITER, lora, base_dir, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    with live_server.registry() as reg:
        v1, v2 = reg.versions("team/uploaded")  # the refused commits left nothing
        assert lines[:3] == [
            v1.commit,
            v2.commit,
            "['README.md', 'adapter_config.json', 'adapter_model.safetensors', 'extra/big.bin']",
        ]
        assert (v1.method, v1.rank, v1.target_modules) == ("lora", 8, ["q_proj", "v_proj"])
        for entry in v1.files:
            assert reg.read_file(v1, entry.path) == (lora / entry.path).read_bytes()
        assert reg.read_file(v2, "extra/big.bin") == bytes(range(256)) * 12_000
        from_peft = reg.show("team/from-peft")
        assert (from_peft.method, from_peft.rank, from_peft.base_model) == (
            "lora",
            8,
            str(base_dir),
        )
    assert lines[3:] == [
        "pushed",
        "refused: 400 adapter_config.json is not valid JSON (line 1, column 2: Expecting"
        " property name enclosed in double quotes)",
        f"refused: 412 team/uploaded moved on: parent commit {v1.commit[:12]} is not the head"
        f" {v2.commit[:12]} (fetch the latest revision and commit again)",
    ]


CONCURRENT = """
import sys
from concurrent.futures import ThreadPoolExecutor
from huggingface_hub import CommitOperationAdd, HfApi
api = HfApi()
api.create_repo("team/busy", exist_ok=True)
api.upload_folder(folder_path=sys.argv[1], repo_id="team/busy")
def note(i):
    operation = CommitOperationAdd(f"notes/{i}.txt", str(i).encode())
    return api.create_commit("team/busy", [operation], commit_message=f"note {i}").oid
with ThreadPoolExecutor(8) as pool:
    print(len(set(pool.map(note, range(8)))))
"""


def test_concurrent_commits_lose_nothing(live_server, tokens, adapters, tmp_path):
    """Eight clients committing to one repository at once: each commit applies on top of the
    one before it, so the last version holds every file."""
    env = hf_env(live_server, tokens["writer"], tmp_path, xet=True)
    result = _client(CONCURRENT, adapters("lora"), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["8"]
    with live_server.registry() as reg:
        versions = reg.versions("team/busy")
        assert [v.version for v in versions] == list(range(1, 10))
        last = versions[-1]
        assert {f.path for f in last.files} >= {f"notes/{i}.txt" for i in range(8)}
        for i in range(8):
            assert reg.read_file(last, f"notes/{i}.txt") == str(i).encode()


UPLOADER = """
import sys
from huggingface_hub import HfApi
api = HfApi()
api.create_repo(sys.argv[2], exist_ok=True)
print(api.upload_folder(folder_path=sys.argv[1], repo_id=sys.argv[2]).oid)
"""


def test_git_lfs_batch_upload_and_verify(tmp_path, adapters, deployment):
    """Files over the inline limit go through Git LFS (Xet disabled); a client with hf_xet
    installed is told the hub has no Xet instead of uploading anywhere else."""
    _need_xet(True)
    lora = adapters("lora")
    with start_server(tmp_path / "home", inline_upload_max=0, **deployment) as server:
        with server.registry() as reg:
            token = create_token(reg, "ci", read=[], write=["team"])
        done = _client(UPLOADER, lora, "team/lfs", env=hf_env(server, token, tmp_path, xet=False))
        assert done.returncode == 0, done.stderr[-3000:]
        with server.registry() as reg:
            card = reg.show("team/lfs")
            assert done.stdout.strip() == card.commit
            assert {f.path: f.sha256 for f in card.files} == {
                p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in lora.iterdir()
            }
        refused = _client(UPLOADER, lora, "team/xet", env=hf_env(server, token, tmp_path, xet=True))
        assert refused.returncode == 1
        assert "501 Not Implemented" in refused.stderr
        assert "/api/models/team/xet/xet-write-token/main" in refused.stderr
        with server.registry() as reg:
            assert reg.versions("team/xet") == []  # created, never committed to

        # The signed upload URL takes only bytes that hash to the announced oid.
        data = b"some LFS object"
        oid = hashlib.sha256(data).hexdigest()
        batch = urllib.request.Request(
            f"{server.url}/team/lfs.git/info/lfs/objects/batch",
            data=json.dumps(
                {"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}
            ).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(batch) as response:
            actions = json.loads(response.read())["objects"][0]["actions"]
        upload = urllib.request.Request(actions["upload"]["href"], data=b"other bytes!!!!")
        upload.method = "PUT"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(upload)
        assert info.value.code == 400
        verify = urllib.request.Request(
            actions["verify"]["href"],
            data=json.dumps({"oid": oid, "size": len(data)}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(verify)
        assert info.value.code == 404
        with server.registry() as reg:
            assert not reg.store.has(oid)
        forged = urllib.request.Request(
            actions["upload"]["href"].replace("ticket=", "ticket=0"), data=data, method="PUT"
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(forged)
        assert info.value.code == 403
        urllib.request.urlopen(
            urllib.request.Request(actions["upload"]["href"], data=data, method="PUT")
        ).close()
        urllib.request.urlopen(verify).close()
        with server.registry() as reg:
            assert reg.store.read_bytes(oid) == data


def test_hf_interop_push_and_pull_against_our_server_as_the_hub(
    live_server, tokens, adapters, tmp_path
):
    """`hub push REF --to hf://...` and `hub pull hf://...`, our server playing the Hub, with
    the client's default settings (hf_xet installed)."""
    local_home = tmp_path / "local-home"
    with Registry(local_home) as reg:
        card = reg.push(adapters("lora"), name="mine/sql").card
    env = hf_env(live_server, tokens["writer"], tmp_path, xet=True)

    def hub(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", "--home", str(local_home), *map(str, args)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    pushed = hub("push", "mine/sql@v1", "--to", "hf://team/mirror")
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    with live_server.registry() as served:
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
