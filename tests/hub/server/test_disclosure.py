"""What a caller may learn through the server: only what its token may read.

References to other repositories (a push's parent, compose inputs) are read-checked, and an
unreadable one looks exactly like a missing one; a pushed adapter's config cannot make the
server read its own disk; no answer names a path on the server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request

import pytest

from hub import Registry
from hub.inspect import count_base_params
from hub.remote import RemoteRegistry
from hub.tokens import create_token
from schemas import AdapterNotFound
from tests.hub.server.live import start_server


def _post(url, token, body, content_type="application/json"):
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def test_a_parent_in_an_unreadable_namespace_looks_missing(live_server, tokens, adapters):
    lora = adapters("lora")
    with Registry(live_server.home) as reg:
        reg.push(lora, name="other/secret")
        reg.push(lora, name="team/base")
    writer = RemoteRegistry(live_server.url, tokens["writer"])
    answers = {}
    for parent in ("other/secret", "other/secret@v1", "other/nothing"):
        with pytest.raises(AdapterNotFound) as info:
            writer.push(lora, name="team/child", parent=parent)
        answers[parent] = str(info.value)
    assert answers == {
        "other/secret": "no adapter 'other/secret' that this token may read",
        "other/secret@v1": "no adapter 'other/secret' that this token may read",
        "other/nothing": "no adapter 'other/nothing' that this token may read",
    }
    with Registry(live_server.home) as reg:
        assert [c["repo"] for c in reg.search_raw()] == ["other/secret", "team/base"]
        base_commit = reg.show("team/base").commit
    card, created = writer.push(lora, name="team/child", parent="team/base")
    assert created and card.lineage.parent == f"team/base@{base_commit}"


def test_compose_inputs_in_an_unreadable_namespace_look_missing(live_server, tokens, adapters):
    with Registry(live_server.home) as reg:
        reg.push(adapters("lora"), name="other/secret")
    url = f"{live_server.url}/api/hub/v1/compose"
    answers = []
    for ref in ("other/secret", "other/nothing"):
        recipe = {"operator": "cat", "inputs": [ref, ref], "name": "team/merged"}
        answers.append(_post(url, tokens["writer"], json.dumps(recipe).encode())[:2])
    assert answers == [
        (
            404,
            {
                "error": {
                    "code": "adapter_not_found",
                    "message": f"no adapter '{r}' that this token may read",
                }
            },
        )
        for r in ("other/secret", "other/nothing")
    ]


def _adapter_naming(tmp_path, adapter, base_model):
    folder = tmp_path / "named"
    shutil.copytree(adapter, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_model
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def _hf_commit(url, token, repo, folder):
    lines = [{"key": "header", "value": {"summary": "upload"}}]
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        content = base64.b64encode(path.read_bytes()).decode()
        lines.append(
            {"key": "file", "value": {"path": path.name, "content": content, "encoding": "base64"}}
        )
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    return _post(f"{url}/api/models/{repo}/commit/main", token, body, "application/x-ndjson")


def _native_push(url, token, repo, folder):
    """A push as the native API receives it: blobs uploaded, then the version posted."""
    files = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        request = urllib.request.Request(
            f"{url}/api/hub/v1/blobs/{digest}",
            data=data,
            method="PUT",
            headers={"Authorization": f"Bearer {token}"},
        )
        urllib.request.urlopen(request).close()
        files.append({"path": path.name, "sha256": digest, "size": len(data)})
    body = json.dumps({"files": files}).encode()
    return _post(f"{url}/api/hub/v1/adapters/{repo}/versions", token, body)


def test_a_pushed_config_cannot_make_the_server_read_its_disk(tmp_path, adapters, base_dir):
    allowed = tmp_path / "models"
    shutil.copytree(base_dir, allowed / "tiny-llama")
    (allowed / "link").symlink_to(base_dir)  # a link inside the allowed folder leading out
    expected = count_base_params(json.loads((base_dir / "config.json").read_text()))
    with Registry(tmp_path / "local") as reg:  # a local push reads the base it names
        local = reg.push(_adapter_naming(tmp_path / "l", adapters("lora"), str(base_dir)))
    assert local.card.params_base == expected
    cases = {
        "id": "tiny-llama",
        "inside": str(allowed / "tiny-llama"),
        "outside": str(base_dir),
        "escape": os.path.relpath(base_dir, allowed),
        "link": "link",
    }
    results = {}
    for allow in ((), (allowed,)):
        with start_server(tmp_path / f"home{len(allow)}", base_dirs=allow) as server:
            with Registry(server.home) as reg:
                token = create_token(reg, "w", read=[], write=["team"])
            for label, named in cases.items():
                folder = _adapter_naming(tmp_path / f"{label}{len(allow)}", adapters("lora"), named)
                native = _native_push(server.url, token, f"team/native-{label}", folder)
                hf = _hf_commit(server.url, token, f"team/hf-{label}", folder)
                assert (native[0], hf[0]) == (200, 200)
                with Registry(server.home) as reg:
                    hf_card = reg.show(f"team/hf-{label}")
                results[len(allow), label] = (native[1]["params_base"], hf_card.params_base)
    assert results == {
        # No allow-list: nothing on the server's disk is read for an uploaded config.
        **{(0, label): (None, None) for label in cases},
        # With one: what lies under it, by id or path; neither `..` nor a link leads out.
        (1, "id"): (expected, expected),
        (1, "inside"): (expected, expected),
        (1, "outside"): (None, None),
        (1, "escape"): (None, None),
        (1, "link"): (None, None),
    }


def test_errors_never_name_a_server_path(live_server, tokens, adapters, tmp_path):
    home = str(live_server.home)
    reader = RemoteRegistry(live_server.url, tokens["reader"])
    with pytest.raises(AdapterNotFound) as info:
        reader.show("team/nope")
    assert str(info.value) == "no adapter named 'team/nope' in the registry at $HUB_HOME"
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(adapters("lora") / "adapter_config.json", broken)
    missing = (
        "broken: no adapter_model.safetensors (nor adapter_model.bin): the adapter's weights"
        " are missing"
    )
    status, body, headers = _native_push(live_server.url, tokens["writer"], "team/broken", broken)
    assert (status, body["error"]["message"]) == (400, missing)
    assert home not in headers["X-Error-Message"]
    status, body, headers = _hf_commit(live_server.url, tokens["writer"], "team/broken", broken)
    assert (status, body["error"]) == (400, missing)
    assert home not in headers["X-Error-Message"]
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(
            urllib.request.Request(
                f"{live_server.url}/api/models/team/nope",
                headers={"Authorization": f"Bearer {tokens['reader']}"},
            )
        )
    text = http.value.read().decode()
    assert http.value.code == 404 and home not in text and "$HUB_HOME" in text


def test_search_limit_counts_only_readable_namespaces(live_server, tokens, adapters):
    lora = adapters("lora")
    with Registry(live_server.home) as reg:  # sorted first, unreadable by the reader
        for name in ("aaa/one", "aaa/two", "team/sql"):
            reg.push(lora, name=name)
    reader = RemoteRegistry(live_server.url, tokens["reader"])
    assert [c["repo"] for c in reader.search_raw(limit=1)] == ["team/sql"]
    assert [c["repo"] for c in reader.search_raw()] == ["team/sql"]
    assert RemoteRegistry(live_server.url, tokens["other"]).search_raw(limit=5) == []
