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


@pytest.mark.parametrize(
    ("option", "value"),
    [("--rank", HUGE), ("--rank", f"{HUGE}.."), ("--rank", f">={HUGE}"), ("--limit", HUGE)],
)
def test_huge_numbers_in_a_search_are_refused_alike(live_server, tokens, hub_home, option, value):
    message = f"invalid {option}: must be between 0 and 9223372036854775807"
    local = _cli("ls", option, value, token=tokens["reader"])
    assert local == (1, f"Error: {message}\n")
    if option == "--rank":  # the server's own bound on --limit is lower, see below
        remote = _cli("ls", option, value, "--from", live_server.url, token=tokens["reader"])
        assert remote == local
        query = urllib.parse.urlencode({"rank": value})
        status, body = _call(
            "GET", f"{live_server.url}/api/hub/v1/adapters?{query}", tokens["reader"]
        )
        assert (status, body) == (400, {"error": {"code": "invalid_argument", "message": message}})
        # Longer than Python parses into an int by default (4300 digits): refused alike.
        assert _cli("ls", option, "9" * 5000, token=tokens["reader"]) == local


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
        "twice": files + [files[0]],
        "nested": files + [note, nested],
        "nested-first": files + [nested, note],
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
    nested_message = "file 'notes' is also the folder of 'notes/extra.txt': a path is a file or a folder"
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
        assert not any((live_server.home / "tmp").iterdir())


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
        {"error": "file 'README.md' is also the folder of 'README.md/x': a path is a file or a folder"},
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
    for field, value, shown in (
        ("tasks", ["\udcff"], "invalid --task '\\udcff'"),
        ("description", "a\udcff", "invalid description 'a\\udcff'"),
        ("metrics", ["acc=0.5@\udcff"], "invalid --metric 'acc@\\udcff'"),
        ("tags", {"\udcff": "v"}, "invalid --tag key '\\udcff'"),
    ):
        with pytest.raises(InvalidArgument) as info:
            writer._json(
                "POST",
                "/api/hub/v1/adapters/team/x/versions",
                {"files": _adapter_files(live_server.url, tokens["writer"], lora), field: value},
            )
        assert str(info.value).startswith(shown + ": not valid Unicode text")
    files = _adapter_files(live_server.url, tokens["writer"], lora)
    files[0]["path"] = "README\udcff.md"
    with pytest.raises(InvalidArgument) as info:
        writer._json("POST", "/api/hub/v1/adapters/team/x/versions", {"files": files})
    assert str(info.value).startswith("invalid file path 'README\\udcff.md': not valid Unicode")
    inline = b'{"key": "file", "value": {"path": "README.md", "content": "\\udcff"}}\n'
    status, body = _call(
        "POST",
        f"{live_server.url}/api/models/team/x/commit/main",
        tokens["writer"],
        _ndjson({"key": "header", "value": {}}) + inline,
        "application/x-ndjson",
    )
    assert (status, body) == (
        400,
        {
            "error": "invalid content of 'README.md' '\\udcff': not valid Unicode text (a lone"
            " surrogate at position 0); send UTF-8 text"
        },
    )
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
