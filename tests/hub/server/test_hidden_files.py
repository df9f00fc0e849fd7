"""Hidden files a client names explicitly are refused, never dropped (the push rule in
hub/folders.py, shared by the native API and Hugging Face commits)."""

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
