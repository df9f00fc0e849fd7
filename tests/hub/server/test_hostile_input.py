"""Inputs that used to crash the server (500) get a 4xx with a JSON error body, the same
message as the local CLI where the input is shared, and leave nothing behind."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from click.testing import CliRunner

from cli.main import cli
from hub import Registry
from hub.remote import RemoteRegistry
from schemas import InvalidArgument

HUGE = "99999999999999999999999"


def _call(method, url, token=None, body=None, content_type="application/json"):
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _cli(*args, token):
    result = CliRunner(env={"HUB_TOKEN": token}).invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stderr


def test_a_huge_limit_through_the_server_is_one_error_line(live_server, tokens):
    code, stderr = _cli("ls", "--limit", HUGE, "--from", live_server.url, token=tokens["reader"])
    assert (code, stderr) == (
        1,
        "Error: invalid request: query.limit: Input should be less than or equal to 100000\n",
    )


def _uploaded(url, token, data):
    digest = hashlib.sha256(data).hexdigest()
    request = urllib.request.Request(
        f"{url}/api/hub/v1/blobs/{digest}",
        data=data,
        method="PUT",
        headers={"Authorization": f"Bearer {token}"},
    )
    urllib.request.urlopen(request).close()
    return {"sha256": digest, "size": len(data)}


def _adapter_files(url, token, folder):
    return [
        {"path": p.name, **_uploaded(url, token, p.read_bytes())}
        for p in sorted(folder.iterdir())
        if p.is_file()
    ]


def test_duplicate_and_nested_paths_in_a_push_are_refused(live_server, tokens, adapters):
    url, token = live_server.url, tokens["writer"]
    files = _adapter_files(url, token, adapters("lora"))
    note = {"path": "notes", **_uploaded(url, token, b"a note")}
    nested = {"path": "notes/extra.txt", **_uploaded(url, token, b"more")}
    cases = {
        "twice": [*files, files[0]],
        "nested": [*files, note, nested],
        "nested-first": [*files, nested, note],
    }
    answers = {
        label: _call(
            "POST",
            f"{url}/api/hub/v1/adapters/team/x/versions",
            token,
            json.dumps({"files": spec}).encode(),
        )
        for label, spec in cases.items()
    }
    nested_message = (
        "file 'notes' is also the folder of 'notes/extra.txt': a path is a file or a folder"
    )
    assert answers == {
        "twice": (
            400,
            {
                "error": {
                    "code": "invalid_argument",
                    "message": "file 'README.md' is listed twice: give each path once",
                }
            },
        ),
        "nested": (400, {"error": {"code": "invalid_argument", "message": nested_message}}),
        "nested-first": (400, {"error": {"code": "invalid_argument", "message": nested_message}}),
    }
    with Registry(live_server.home) as reg:
        assert reg.search_raw() == []
        assert not list((live_server.home / "tmp").glob("*"))


def _ndjson(*items):
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def _inline(path, data):
    content = base64.b64encode(data).decode()
    return {"key": "file", "value": {"path": path, "content": content, "encoding": "base64"}}


def test_nested_paths_in_a_hf_commit_are_refused(live_server, tokens, adapters):
    url, token = live_server.url, tokens["writer"]
    lora = adapters("lora")
    files = [_inline(p.name, p.read_bytes()) for p in sorted(lora.iterdir()) if p.is_file()]
    header = {"key": "header", "value": {"summary": "s"}}
    commit = f"{url}/api/models/team/x/commit/main"
    nested = _ndjson(header, *files, _inline("notes", b"n"), _inline("notes/a.txt", b"a"))
    assert _call("POST", commit, token, nested, "application/x-ndjson") == (
        400,
        {"error": "file 'notes' is also the folder of 'notes/a.txt': a path is a file or a folder"},
    )
    assert _call("POST", commit, token, _ndjson(header, *files), "application/x-ndjson")[0] == 200
    # On top of the stored version: its README.md cannot become a folder.
    onto = _ndjson(header, _inline("README.md/x", b"x"))
    assert _call("POST", commit, token, onto, "application/x-ndjson") == (
        400,
        {
            "error": "file 'README.md' is also the folder of 'README.md/x':"
            " a path is a file or a folder"
        },
    )
    with Registry(live_server.home) as reg:
        assert [v.version for v in reg.versions("team/x")] == [1]


def test_lone_surrogates_are_refused_alike(live_server, tokens, adapters, hub_home):
    lora = adapters("lora")
    message = (
        "invalid --tag 'k' '\\udcff': not valid Unicode text (a lone surrogate at position 0);"
        " send UTF-8 text"
    )
    with Registry(hub_home) as reg, pytest.raises(InvalidArgument) as local:
        reg.push(lora, name="team/x", tags={"k": "\udcff"})
    assert str(local.value) == message
    writer = RemoteRegistry(live_server.url, tokens["writer"])
    with pytest.raises(InvalidArgument) as remote:
        writer.push(lora, name="team/x", tags=["k=\udcff"])
    assert str(remote.value) == message
    unicode = ": not valid Unicode text (a lone surrogate at position {}); send UTF-8 text"
    pydantic = ": Input should be a valid string, unable to parse raw data as a unicode string"
    for field, value, expected in (
        ("tasks", ["\udcff"], "invalid --task '\\udcff'" + unicode.format(0)),
        ("metrics", ["acc=0.5@\udcff"], "invalid --metric 'acc@\\udcff'" + unicode.format(4)),
        ("tags", {"\udcff": "v"}, "invalid --tag key '\\udcff'" + unicode.format(0)),
        ("description", "a\udcff", "invalid request: body.description" + pydantic),
        ("parent", "\udcff", "invalid request: body.parent" + pydantic),
    ):
        with pytest.raises(InvalidArgument) as info:
            writer._json(
                "POST",
                "/api/hub/v1/adapters/team/x/versions",
                {"files": _adapter_files(live_server.url, tokens["writer"], lora), field: value},
            )
        assert str(info.value) == expected
    with Registry(hub_home) as reg, pytest.raises(InvalidArgument) as local:
        reg.push(lora, name="team/x", description="a\udcff")
    assert str(local.value) == "invalid description 'a\\udcff'" + unicode.format(1)
    files = _adapter_files(live_server.url, tokens["writer"], lora)
    files[0]["path"] = "README\udcff.md"
    with pytest.raises(InvalidArgument) as info:
        writer._json("POST", "/api/hub/v1/adapters/team/x/versions", {"files": files})
    assert str(info.value) == "invalid request: body.files.0.path" + pydantic
    commit = f"{live_server.url}/api/models/team/x/commit/main"
    header = _ndjson({"key": "header", "value": {}})
    for line, expected in (
        (
            b'{"key": "file", "value": {"path": "README.md", "content": "\\udcff"}}\n',
            "invalid content of 'README.md' '\\udcff'" + unicode.format(0),
        ),
        (
            b'{"key": "file", "value": {"path": "a\\udcff", "content": "x"}}\n',
            "invalid file path 'a\\udcff'" + unicode.format(1),
        ),
    ):
        status, body = _call(
            "POST", commit, tokens["writer"], header + line, "application/x-ndjson"
        )
        assert (status, body) == (400, {"error": expected})
    with Registry(live_server.home) as server, Registry(hub_home) as local_reg:
        assert server.search_raw() == local_reg.search_raw() == []


def test_a_non_ascii_lfs_ticket_is_refused_without_a_token(live_server):
    oid = "a" * 64
    url = f"{live_server.url}/api/hub/v1/lfs/{oid}?expires={int(time.time()) + 60}&who=x"
    for ticket in ("%C3%A9", "%FF", "t"):
        assert _call("PUT", f"{url}&ticket={ticket}", body=b"data") == (
            403,
            {"error": "upload link expired or invalid"},
        )


def test_a_seed_beyond_64_bits_is_refused_alike(live_server, tokens, adapters, hub_home):
    for home in (live_server.home, hub_home):
        with Registry(home) as reg:
            reg.push(adapters("lora"), name="team/a")
    seed = str(2**64)
    status, body = _call(
        "POST",
        f"{live_server.url}/api/hub/v1/compose",
        tokens["writer"],
        json.dumps(
            {"operator": "dare", "inputs": ["team/a", "team/a"], "name": "team/d", "seed": 2**64}
        ).encode(),
    )
    message = "Input should be less than or equal to 18446744073709551615"
    assert (status, body["error"]["message"]) == (422, f"invalid request: body.seed: {message}")
    local = CliRunner().invoke(
        cli, ["compose", "dare", "team/a", "team/a", "--name", "team/d", "--seed", seed]
    )
    assert (local.exit_code, local.stderr) == (1, f"Error: command line: field 'seed': {message}\n")
    for home in (live_server.home, hub_home):
        with Registry(home) as reg:
            assert [c["repo"] for c in reg.search_raw()] == ["team/a"]


def test_inline_content_that_is_not_ascii_base64_is_refused(live_server, tokens):
    line = {"key": "file", "value": {"path": "README.md", "content": "é", "encoding": "base64"}}
    status, body = _call(
        "POST",
        f"{live_server.url}/api/models/team/x/commit/main",
        tokens["writer"],
        _ndjson({"key": "header", "value": {}}, line),
        "application/x-ndjson",
    )
    assert (status, body) == (
        400,
        {
            "error": "file 'README.md': bad base64 (string argument should contain only ASCII"
            " characters)"
        },
    )


def test_weights_that_are_not_finite_or_overflow_are_refused(
    live_server, tokens, adapters, hub_home
):
    for home in (live_server.home, hub_home):
        with Registry(home) as reg:
            reg.push(adapters("lora"), name="team/a")
    url = f"{live_server.url}/api/hub/v1/compose"
    recipe = '{"operator": "ties", "inputs": ["team/a", "team/a"], "name": "team/t",'
    recipe += ' "rank": 4, "density": 0.5, "weights": %s}'
    answers = [
        _call("POST", url, tokens["writer"], (recipe % weights).encode())
        for weights in ("[0.5, Infinity]", "[NaN, 0.5]", "[1e300, 1e300]")
    ]
    finite = "Input should be a finite number"
    overflow = (
        "the combined delta of module 'model.layers.0.self_attn.q_proj' is not"
        " finite: weights this large overflow (use weights of the order of 1)"
    )
    assert [(status, body["error"]["message"]) for status, body in answers] == [
        (422, f"invalid request: body.weights.1: {finite}"),
        (422, f"invalid request: body.weights.0: {finite}"),
        (400, overflow),
    ]
    args = ["compose", "ties", "team/a", "team/a", "--name", "team/t", "--density", "0.5"]
    local = CliRunner().invoke(cli, [*args, "--weights", "inf,1"])
    assert (local.exit_code, local.stderr) == (
        1,
        f"Error: command line: field 'weights.0': {finite}\n",
    )
    local = CliRunner().invoke(cli, [*args, "--weights", "1e300,1e300"])
    assert (local.exit_code, local.stderr) == (1, f"Error: {overflow}\n")
    for home in (live_server.home, hub_home):
        with Registry(home) as reg:
            assert [c["repo"] for c in reg.search_raw()] == ["team/a"]
