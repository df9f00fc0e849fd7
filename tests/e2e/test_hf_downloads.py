"""Downloads from the team hub on PostgreSQL + S3 (real servers: tests/backends.py,
tests/s3.py): GETs answer 302 to a presigned URL with the HF metadata on the redirect, HEAD
answers the metadata itself, ranges survive the redirect, the unmodified huggingface_hub and
PEFT load through it; and the proxy mode for stores clients cannot reach."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from cli.main import cli
from hub.remote import RemoteRegistry
from hub.server import create_app
from hub.tokens import create_token
from schemas.errors import InvalidArgument
from tests.hub.server.live import hf_env, start_server


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _raw(url: str, token: str, *, method: str = "GET", headers: dict | None = None):
    """One request, redirects not followed: the response (or the HTTPError, which is one)."""
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(
        url, method=method, headers={"Authorization": f"Bearer {token}", **(headers or {})}
    )
    try:
        return opener.open(request)
    except urllib.error.HTTPError as error:
        return error


def _tokens(server):
    with server.registry() as reg:
        return (
            create_token(reg, "writer", read=[], write=["team"]),
            create_token(reg, "reader", read=["team"], write=[]),
        )


def test_get_redirects_to_a_presigned_url_and_head_answers_itself(team_server, adapters):
    writer, reader = _tokens(team_server)
    lora = adapters("lora")
    card, _ = RemoteRegistry(team_server.url, writer).push(lora, name="team/sql")
    weights = next(f for f in card.files if f.path == "adapter_model.safetensors")
    data = (lora / weights.path).read_bytes()
    url = f"{team_server.url}/team/sql/resolve/main/{weights.path}"

    head = _raw(url, reader, method="HEAD")
    assert head.status == 200
    assert head.headers["X-Repo-Commit"] == card.commit
    assert head.headers["X-Linked-Etag"] == f'"{weights.sha256}"'
    assert head.headers["X-Linked-Size"] == str(weights.size)
    assert head.headers["Content-Length"] == str(len(data))
    assert head.read() == b""

    got = _raw(url, reader)
    assert got.status == 302
    location = got.headers["Location"]
    assert location.startswith(os.environ["AWS_ENDPOINT_URL_S3"] + "/")  # the store's own
    assert "X-Amz-Signature=" in location and "X-Amz-Expires=300" in location
    assert got.headers["Cache-Control"] == "no-store"
    assert got.headers["X-Repo-Commit"] == card.commit
    assert got.headers["X-Linked-Etag"] == f'"{weights.sha256}"'
    assert got.headers["X-Linked-Size"] == str(weights.size)
    with urllib.request.urlopen(location) as response:  # the store, not the hub
        assert response.read() == data

    # A resumed download: urllib follows the redirect with the Range header.
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {reader}", "Range": "bytes=100-199"}
    )
    with urllib.request.urlopen(request) as response:
        assert (response.status, response.read()) == (206, data[100:200])

    # The native API too; a caller that may not read gets no URL.
    native = _raw(f"{team_server.url}/api/hub/v1/blobs/{weights.sha256}", reader)
    assert native.status == 302 and "X-Amz-Signature=" in native.headers["Location"]
    with team_server.registry() as reg:
        stranger = create_token(reg, "stranger", read=["elsewhere"], write=[])
    assert _raw(f"{team_server.url}/api/hub/v1/blobs/{weights.sha256}", stranger).status == 404
    assert _raw(url, stranger).status == 403


def test_pull_and_huggingface_hub_through_the_redirect(team_server, adapters, tmp_path, base_dir):
    writer, reader = _tokens(team_server)
    lora = adapters("lora")
    card, _ = RemoteRegistry(team_server.url, writer).push(lora, name="team/sql")
    out = tmp_path / "pulled"
    RemoteRegistry(team_server.url, reader).pull("team/sql", out)
    for f in card.files:
        assert (out / f.path).read_bytes() == (lora / f.path).read_bytes()

    script = """
import os, sys
from huggingface_hub import HfApi, snapshot_download
path = snapshot_download("team/sql")
print(sorted(os.listdir(path)))
from peft import PeftModel
from transformers import AutoModelForCausalLM
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[1]), "team/sql")
print(type(model).__name__)
api = HfApi()
api.create_repo("team/uploaded", exist_ok=True)
api.upload_folder(folder_path=sys.argv[2], repo_id="team/uploaded")
print("uploaded")
print(sorted(os.listdir(snapshot_download("team/uploaded"))))
"""
    with team_server.registry() as reg:
        both = create_token(reg, "both", read=["team"], write=["team"])
    env = hf_env(team_server, both, tmp_path, xet=False)
    result = subprocess.run(
        [sys.executable, "-c", script, str(base_dir), str(lora)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = "['README.md', 'adapter_config.json', 'adapter_model.safetensors']"
    assert result.stdout.splitlines() == [files, "PeftModelForCausalLM", "uploaded", files]
    with team_server.registry() as reg:
        assert reg.show("team/uploaded").version == 1


def test_proxy_mode_streams_the_store_with_ranges(hub_home, pg_url, s3_store_url, adapters):
    options = {"db": pg_url, "store": s3_store_url, "store_downloads": "proxy"}
    with start_server(hub_home, **options) as server:
        writer, reader = _tokens(server)
        lora = adapters("lora")
        card, _ = RemoteRegistry(server.url, writer).push(lora, name="team/sql")
        weights = next(f for f in card.files if f.path == "adapter_model.safetensors")
        data = (lora / weights.path).read_bytes()
        url = f"{server.url}/team/sql/resolve/main/{weights.path}"
        whole = _raw(url, reader)
        assert (whole.status, whole.headers["X-Repo-Commit"]) == (200, card.commit)
        assert whole.read() == data
        for asked, status, body in (
            ("bytes=10-19", 206, data[10:20]),
            ("bytes=-7", 206, data[-7:]),
            (f"bytes={len(data) - 3}-", 206, data[-3:]),
            (f"bytes=5-{len(data) + 100}", 206, data[5:]),
        ):
            part = _raw(url, reader, headers={"Range": asked})
            assert (part.status, part.read()) == (status, body), asked
        part = _raw(url, reader, headers={"Range": "bytes=10-19"})
        assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
        beyond = _raw(url, reader, headers={"Range": f"bytes={len(data)}-"})
        assert (beyond.status, beyond.headers["Content-Range"]) == (416, f"bytes */{len(data)}")


def test_a_blob_gone_from_the_bucket_is_a_clear_error(team_server, adapters):
    writer, reader = _tokens(team_server)
    card, _ = RemoteRegistry(team_server.url, writer).push(adapters("lora"), name="team/sql")
    weights = next(f for f in card.files if f.path == "adapter_model.safetensors")
    with team_server.registry() as reg:
        store = reg.store
        store.client.delete_object(Bucket=store.bucket, Key=store.key(weights.sha256))
    got = _raw(f"{team_server.url}/team/sql/resolve/main/{weights.path}", reader)
    assert got.status == 500
    assert json.loads(got.read()) == {
        "error": f"blob {weights.sha256[:12]} is missing from the store (run `hub verify`)"
    }


def test_bad_download_settings_are_refused(tmp_path, s3_env):
    with pytest.raises(InvalidArgument) as info:
        create_app(tmp_path, store_downloads="mirror")
    assert str(info.value) == "--store-downloads 'mirror': one of redirect, proxy"
    with pytest.raises(InvalidArgument) as info:
        create_app(tmp_path, presign_expires=0)
    assert str(info.value) == (
        "--presign-expires 0: between 1 and 604800 seconds (7 days, the longest S3 signs for)"
    )
    result = CliRunner().invoke(
        cli, ["--home", str(tmp_path), "serve", "--store", "s3://no-such-bucket-anywhere/b"]
    )
    assert result.exit_code == 1
    assert result.output.startswith(
        "Error: blob store s3://no-such-bucket-anywhere/b is unavailable (NoSuchBucket:"
    )
    assert result.output.count("\n") == 1
