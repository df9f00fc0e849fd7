"""Rules the server shares with local pushes and searches: hidden files a client names are
refused, never dropped (hub/folders.py); non-finite metrics and out-of-range ranks are refused
with the local message (schemas/)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hub import Registry
from hub.remote import RemoteRegistry
from schemas import InvalidArgument
from tests.hub.server.live import hf_env


def test_native_push_of_a_hidden_file_is_refused(live_server, tokens, adapters):
    remote = RemoteRegistry(live_server.url, tokens["writer"])
    remote.push(adapters("lora"), name="team/sql")
    with Registry(live_server.home) as reg:
        files = [f.model_dump() for f in reg.show("team/sql").files]
    for path in (".env", "notes/.hidden", "__pycache__/x.pyc"):
        with pytest.raises(InvalidArgument) as error:
            remote._json(
                "POST",
                "/api/hub/v1/adapters/team/sql/versions",
                {"files": [*files, {**files[0], "path": path}]},
            )
        assert str(error.value) == (
            f"file {path!r} is hidden (or under __pycache__): hub never stores such files;"
            " leave it out of the upload"
        )
    with Registry(live_server.home) as reg:
        assert [c.version for c in reg.versions("team/sql")] == [1]


HF_COMMIT = """
import sys
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError
api = HfApi()
api.upload_folder(folder_path=sys.argv[1], repo_id="team/hf")
try:
    api.create_commit("team/hf", [CommitOperationAdd(".env", b"SECRET=1\\n")],
                      commit_message="hidden")
except HfHubHTTPError as error:
    print("refused:", error.response.status_code, error.server_message)
"""


def test_hf_commit_of_a_hidden_file_is_refused(live_server, tokens, adapters, tmp_path):
    env = hf_env(live_server, tokens["writer"], tmp_path, xet=False)
    result = subprocess.run(
        [sys.executable, "-c", HF_COMMIT, str(adapters("lora"))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == (
        "refused: 400 file '.env' is hidden (or under __pycache__): hub never stores such"
        " files; leave it out of the upload"
    )
    with Registry(live_server.home) as reg:
        assert [c.version for c in reg.versions("team/hf")] == [1]


def test_server_refuses_non_finite_metrics_and_huge_ranks_like_the_cli(
    live_server, tokens, adapters
):
    remote = RemoteRegistry(live_server.url, tokens["writer"])
    with pytest.raises(InvalidArgument) as error:
        remote.push(adapters("lora"), name="team/sql", metrics=["acc=1e400"])
    assert str(error.value) == (
        "invalid --metric 'acc=1e400': the value must be a finite number"
        " (inf and values beyond 1.8e308 are not)"
    )
    with Registry(live_server.home) as reg:
        assert reg.search_raw() == []  # refused before anything was committed
    with pytest.raises(InvalidArgument) as error:
        RemoteRegistry(live_server.url, tokens["reader"]).search_raw(rank="99999999999999999999999")
    assert str(error.value) == (
        "invalid --rank '99999999999999999999999': 99999999999999999999999 is over 1000000,"
        " more than any adapter's rank"
    )
