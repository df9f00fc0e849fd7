"""A Hugging Face commit's NDJSON lines read by ``read_commit`` (hub/server/hf_commit.py):
inline files streamed into the blob store as they are parsed, on both kinds of store (a
folder, a real S3 server: ``store_url``), and malformed lines refused with nothing stored."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest

from hub.blobstore import open_store
from hub.server.hf_commit import read_commit
from schemas import InvalidArgument
from tests.hub.server.live import store_leftovers


def _ndjson(path, *lines):
    path.write_bytes(b"".join(line.encode() + b"\n" for line in lines))
    return path


def test_commit_lines_are_streamed_into_the_store(tmp_path, store_url):
    store = open_store(store_url, tmp_path / "home")
    data = os.urandom(3 * 1024 * 1024)
    digest, b64 = hashlib.sha256(data).hexdigest(), base64.b64encode(data).decode()
    small = base64.b64encode(b"small").decode()
    commit = read_commit(
        _ndjson(
            tmp_path / "commit.ndjson",
            json.dumps({"key": "header", "value": {"summary": "s", "parentCommit": "ab"}}),
            json.dumps(
                {"key": "file", "value": {"content": b64, "path": "w.bin", "encoding": "base64"}}
            ),
            '{"value": {"path": "odd \\"name\\"", "encoding": "base64", "content" : "'
            + b64
            + '"}, "key": "file"}',
            json.dumps(
                {"key": "file", "value": {"content": small, "path": "s.txt", "encoding": "base64"}}
            ),
            json.dumps({"key": "deletedFile", "value": {"path": "old.txt"}}),
            json.dumps({"key": "deletedFolder", "value": {"path": "logs"}}),
        ),
        store,
        upload_limit=10 * 1024 * 1024,
    )
    assert commit.header == {"summary": "s", "parentCommit": "ab"}
    assert commit.operations == [
        ("add", "w.bin", digest),
        ("add", 'odd "name"', digest),
        ("add", "s.txt", hashlib.sha256(b"small").hexdigest()),
        ("delete", "old.txt", ""),
        ("delete_folder", "logs/", ""),
    ]
    assert store.read_bytes(digest) == data
    assert store_leftovers(store) == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            json.dumps({"key": "header", "value": {"description": "x" * 2_000_000}}),
            "commit line 1 is over 1048576 bytes and is not an inline file",
        ),
        (
            '{"key": "file", "value": {"content": "' + "QUFB" * 500_000 + '\\u0041"}}',
            "commit line 1: inline content is not base64",
        ),
        ('{"key": "file", "value": {"content": "' + "QUFB" * 500_000, "commit line 1 is truncated"),
        (
            '{"key": "file", "value": {"content": "' + "QUFB" * 500_000 + '", "path": "a"}}',
            "commit line 1: a large value must be a base64 file",
        ),
        (
            '{"key": "file", "value": {"content": "'
            + "QUFB" * 500_000
            + '$", "path": "a", "encoding": "base64"}}',
            "commit line 1: bad base64 (Only base64 data is allowed)",
        ),
        (
            '{"key": "file", "value": {"content": "'
            + "QUFB" * 5_000_000
            + '", "path": "a", "encoding": "base64"}}',
            "upload over 10485760 bytes",
        ),
        (
            json.dumps({"key": "file", "value": {"content": "eA==", "path": "../x"}}),
            "invalid file path '../x': must stay inside the adapter folder",
        ),
        (
            '{"key": "file", "value": {"content": "'
            + "QUFB" * 500_000
            + '", "path": "a/../../x", "encoding": "base64"}}',
            "invalid file path 'a/../../x': must stay inside the adapter folder",
        ),
        (
            json.dumps({"key": "lfsFile", "value": {"path": "a"}}),
            "malformed commit operation on line 1: no 'oid' field",
        ),
    ],
    ids=[
        "long-header",
        "escapes",
        "truncated",
        "no-encoding",
        "bad-base64",
        "too-big",
        "escape",
        "escape-large",
        "no-oid",
    ],
)
def test_bad_commit_lines_are_refused_and_leave_nothing(tmp_path, store_url, line, message):
    store = open_store(store_url, tmp_path / "home")
    with pytest.raises(InvalidArgument) as info:
        read_commit(_ndjson(tmp_path / "c.ndjson", line), store, upload_limit=10 * 1024 * 1024)
    assert str(info.value) == message
    assert list(store.iter_digests()) == []
    assert store_leftovers(store) == []
