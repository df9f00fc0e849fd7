"""A multi-adapter save (PEFT's ``save_pretrained`` of a model holding several adapters: one
subfolder per adapter besides ``default``) pushed to a real `hub serve` on 127.0.0.1, through
our client (``hub push --to URL``) and through the Hugging Face protocol (the unmodified
``huggingface_hub`` ``upload_folder`` and PEFT's ``push_to_hub``): each adapter is carded and
indexed exactly as a local ``hub push`` does it, one repository ``NAME`` / ``NAME-<adapter>``
per adapter, each loadable alone by ``PeftModel.from_pretrained``; on both deployments
(SQLite + a folder, PostgreSQL + S3: ``deployment``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from hub import Registry
from hub.remote import RemoteRegistry
from schemas.errors import InvalidAdapter
from tests.factories import load_base, make_adapter
from tests.hub.server.live import LiveServer, hf_env

pytestmark = pytest.mark.usefixtures("deployment")

IDS = torch.tensor([[1, 5, 9, 42, 7, 3]])
_SAME = ("version", "commit", "method", "rank", "alpha", "target_modules", "params_trainable")


@pytest.fixture
def multi(tmp_path, base_dir) -> Path:
    """``default`` on q/v (rank 8) and ``chat`` on k (rank 4), saved as PEFT saves them."""
    from peft import PeftModel

    first = make_adapter("lora", tmp_path / "first", base_dir, seed=3)
    second = make_adapter(
        "lora", tmp_path / "second", base_dir, seed=4, r=4, target_modules=["k_proj"]
    )
    model = PeftModel.from_pretrained(load_base(base_dir), str(first))
    model.load_adapter(str(second), adapter_name="chat")
    model.save_pretrained(tmp_path / "multi")
    assert (tmp_path / "multi" / "chat" / "adapter_config.json").is_file()
    return tmp_path / "multi"


def _local_cards(folder: Path, name: str, home: Path) -> dict[str, dict]:
    """What a local ``hub push`` of ``folder`` makes: repository -> its card's fields."""
    with Registry(home) as local:
        result = local.push(folder, name=name)
        return {r.card.repo: _fields(r.card) for r in [result, *result.others]}


def _fields(card) -> dict:
    files = [(f.path, f.sha256, f.size) for f in card.files]
    return {"files": files, **{key: getattr(card, key) for key in _SAME}}


def _server_cards(server: LiveServer, repos) -> dict[str, dict]:
    with server.registry() as reg:
        return {repo: _fields(reg.show(repo)) for repo in repos}


def _logits(base_dir: Path, folder: Path) -> torch.Tensor:
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(base_dir), str(folder)).eval()
    with torch.no_grad():
        return model(IDS).logits


def test_remote_push_is_one_repository_per_adapter(live_server, tokens, multi, base_dir, tmp_path):
    remote = RemoteRegistry(live_server.url, tokens["writer"])
    result = remote.push_result(multi, name="team/multi", tasks=["demo"])

    assert [result.card.repo, *(o.card.repo for o in result.others)] == [
        "team/multi",
        "team/multi-chat",
    ]
    assert (result.created, [o.created for o in result.others]) == (True, [True])
    local = _local_cards(multi, "team/multi", tmp_path / "local-home")
    assert _server_cards(live_server, local) == local
    assert {c["repo"] for c in remote.search_raw(tasks=["demo"])} == set(local)
    for repo, original in (("team/multi", multi), ("team/multi-chat", multi / "chat")):
        pulled = remote.pull(repo, tmp_path / "pulled" / repo.split("/")[1])
        torch.testing.assert_close(
            _logits(base_dir, pulled), _logits(base_dir, original), rtol=0, atol=1e-6
        )
    # The same files again: no new version of either, both reported.
    again = remote.push_result(multi, name="team/multi")
    assert (again.created, [o.created for o in again.others]) == (False, [False])


def test_cli_push_to_a_remote_lists_each_repository(live_server, tokens, multi):
    runner = CliRunner(env={"HUB_TOKEN": tokens["writer"]})
    out = runner.invoke(cli, ["push", str(multi), "--name", "team/multi", "--to", live_server.url])
    assert out.exit_code == 0, out.output
    assert [line.split("@")[0] for line in out.output.splitlines()] == [
        "Pushed team/multi",
        "Pushed team/multi-chat",
    ]
    args = ["push", str(multi), "--name", "team/multi", "--to", live_server.url, "--json"]
    body = json.loads(runner.invoke(cli, args).output)
    assert (body["created"], [(o["repo"], o["created"]) for o in body["others"]]) == (
        False,
        [("team/multi-chat", False)],
    )


def test_remote_push_checks_every_adapter_before_uploading(live_server, tokens, multi):
    (multi / "chat" / "adapter_config.json").write_text("{}")
    remote = RemoteRegistry(live_server.url, tokens["writer"])
    with pytest.raises(InvalidAdapter, match="field 'peft_type' is missing"):
        remote.push_result(multi, name="team/multi")
    with live_server.registry() as reg:
        assert reg.search() == []
        assert list(reg.store.iter_digests()) == []  # nothing was uploaded


HF_PUSHES = """
import sys
import torch
from huggingface_hub import HfApi
from peft import PeftModel
from transformers import AutoModelForCausalLM
multi, base = sys.argv[1], sys.argv[2]
api = HfApi()
api.create_repo("team/uploaded", exist_ok=True)
api.upload_folder(folder_path=multi, repo_id="team/uploaded")
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), multi)
model.load_adapter(multi + "/chat", adapter_name="chat")
model.push_to_hub("team/from-peft")
print(sorted(api.list_repo_files("team/uploaded")))
ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
def logits(ref, **kw):
    m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), ref, **kw).eval()
    with torch.no_grad():
        return m(ids).logits
for repo in ("team/uploaded-chat", "team/from-peft-chat"):
    print(repo, float((logits(repo) - logits(multi + "/chat")).abs().max()))
"""


def test_hf_uploads_are_one_repository_per_adapter(live_server, tokens, multi, base_dir, tmp_path):
    env = hf_env(live_server, tokens["writer"], tmp_path, xet=False)
    run = subprocess.run(
        [sys.executable, "-c", HF_PUSHES, str(multi), str(base_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    # The top repository holds default's files; chat/ is its own repository, as locally.
    assert lines[0] == "['README.md', 'adapter_config.json', 'adapter_model.safetensors']"
    diffs = dict(line.split() for line in lines[1:])
    assert sorted(diffs) == ["team/from-peft-chat", "team/uploaded-chat"]
    for diff in diffs.values():  # the same bytes, loaded by the same PEFT
        assert float(diff) <= 1e-6, diffs
    uploaded = _local_cards(multi, "team/uploaded", tmp_path / "local-uploaded")
    assert _server_cards(live_server, uploaded) == uploaded
    with live_server.registry() as reg:
        pushed = reg.show("team/from-peft-chat")
        chat = reg.show("team/uploaded-chat")
        # PEFT's push_to_hub writes its own README; the adapter's files are the same bytes.
        assert {f.path: f.sha256 for f in pushed.files if f.path != "README.md"} == {
            f.path: f.sha256 for f in chat.files if f.path != "README.md"
        }
        assert _fields(pushed)["target_modules"] == ["k_proj"]
        assert {c.repo for c in reg.search()} == {
            "team/uploaded",
            "team/uploaded-chat",
            "team/from-peft",
            "team/from-peft-chat",
        }
