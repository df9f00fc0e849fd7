"""The Hugging Face NDJSON commit, read with bounded memory and applied through the registry.

A commit body (``application/x-ndjson``: a ``header`` line, then one operation per line) is
spooled to disk as it arrives, within a size bound. Each line is then read on its own: short
lines are parsed as JSON, and the one kind of long line, a file sent inline as base64 (what
clients with ``hf_xet`` installed send, since this server never offers Xet), is decoded
straight into the blob store in chunks, so a large adapter never sits in memory.

The operations are applied to the repository's latest files and the resulting folder is
pushed through ``Registry.push``: inspected and indexed exactly like ``hub push``, or refused
with the same error. Concurrent commits to one repository, from any worker, are ordered by
the catalog's commit transaction (``apply_commit``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from fastapi import Request

from hub.blobstore import BlobStore
from hub.registry import PushResult, Registry, commit_id
from hub.server.common import DIGEST, MiB, stage_files
from hub.server.shared import check_file_tree, safe_relative_path
from schemas.errors import (
    AdapterNotFound,
    HeadMoved,
    InvalidAdapter,
    InvalidArgument,
    RevisionNotFound,
)
from schemas.inputs import check_text

SHORT_LINE = MiB
"""Lines up to this long are parsed as JSON; longer ones must be inline base64 files."""
_CONTENT_KEY = re.compile(rb'"content"\s*:\s*"')
_STRING_END = re.compile(rb'["\\\n]')
_B64_CHUNK = 4 * MiB  # a multiple of 4: each chunk of base64 text decodes on its own
COMMIT_ATTEMPTS = 16
"""How often a commit without ``parentCommit`` is built again on a newer head before the
client is asked to send it again (each time, another commit to the repository came first)."""


@dataclass
class Commit:
    """A parsed commit: its header and its operations, with inline files already stored."""

    header: dict[str, Any] = field(default_factory=dict)
    operations: list[tuple[Literal["add", "delete", "delete_folder"], str, str]] = field(
        default_factory=list
    )
    """(kind, path, sha256 of an added file or ""), in order."""


async def spool(request: Request, scratch: Path, limit: int) -> Path:
    """Write the request body to a temp file in ``scratch``; refuse it past ``limit`` bytes."""
    fd, name = tempfile.mkstemp(dir=scratch, suffix=".ndjson.incomplete")
    size = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise InvalidArgument(f"commit payload over {limit} bytes", status=413)
                fh.write(chunk)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def read_commit(
    path: Path,
    store: BlobStore,
    *,
    upload_limit: int,
    may_reference: Callable[[str], bool] | None = None,
) -> Commit:
    """Parse the spooled NDJSON commit at ``path``; inline files go into ``store``.

    ``may_reference(oid)`` says whether an ``lfsFile`` operation may use a stored object
    (default: any stored object)."""
    usable = may_reference or store.has
    commit = Commit()
    with open(path, "rb") as fh:
        number = 0
        while True:
            number += 1
            line = _next_item(fh, store, upload_limit, number)
            if line is None:
                return commit
            item, stored = line
            try:
                _apply_item(commit, item, stored, store, upload_limit, usable)
            except KeyError as error:
                raise InvalidArgument(
                    f"malformed commit operation on line {number}: no {error.args[0]!r} field"
                ) from None
            except (TypeError, AttributeError) as error:
                raise InvalidArgument(
                    f"malformed commit operation on line {number}: {error}"
                ) from None


def _loads(text: bytes, number: int) -> Any:
    try:
        item = json.loads(text)
    except ValueError as error:
        raise InvalidArgument(f"commit line {number} is not JSON: {error}") from None
    if not isinstance(item, dict):
        raise InvalidArgument(f"commit line {number} is not a JSON object")
    return item


def _next_item(
    fh: IO[bytes], store: BlobStore, limit: int, number: int
) -> tuple[dict[str, Any], str | None] | None:
    """The next operation and, for a long inline file, the sha256 it was stored under on the
    way (its content then reads ""). None at the end."""
    while True:
        start = fh.tell()
        head = fh.readline(SHORT_LINE)
        if not head:
            return None
        if head.endswith(b"\n") or len(head) < SHORT_LINE:
            if head.strip():
                return _loads(head, number), None
            continue
        match = _CONTENT_KEY.search(head)
        if match is None:
            raise InvalidArgument(
                f"commit line {number} is over {SHORT_LINE} bytes and is not an inline file"
            )
        begin = start + match.end()
        end = _string_end(fh, begin, number)
        fh.seek(end + 1)
        rest = fh.readline(SHORT_LINE)
        if not (rest.endswith(b"\n") or len(rest) < SHORT_LINE):
            raise InvalidArgument(f"commit line {number} holds more than one large value")
        item = _loads(head[: match.end()] + b'"' + rest, number)
        value = item.get("value")
        if (
            item.get("key") != "file"
            or not isinstance(value, dict)
            or value.get("content") != ""
            or value.get("encoding") != "base64"
        ):
            raise InvalidArgument(f"commit line {number}: a large value must be a base64 file")
        if isinstance(value.get("path"), str):
            safe_relative_path(value["path"])  # refused before anything is stored
        after = fh.tell()
        stored = _decode_span(fh, begin, end, store, limit, number)
        fh.seek(after)
        return item, stored


def _string_end(fh: IO[bytes], begin: int, number: int) -> int:
    """Offset of the quote closing the base64 string that starts at ``begin``."""
    fh.seek(begin)
    offset = begin
    while chunk := fh.read(_B64_CHUNK):
        found = _STRING_END.search(chunk)
        if found is not None:
            if found.group() == b"\\":
                raise InvalidArgument(f"commit line {number}: inline content is not base64")
            if found.group() == b"\n":
                break
            return offset + found.start()
        offset += len(chunk)
    raise InvalidArgument(f"commit line {number} is truncated")


def _decode_span(
    fh: IO[bytes], begin: int, end: int, store: BlobStore, limit: int, number: int
) -> str:
    fh.seek(begin)
    left = end - begin
    with store.writer(limit=limit) as blob:
        while left > 0:
            text = fh.read(min(_B64_CHUNK, left))
            left -= len(text)
            try:
                blob.write(base64.b64decode(text, validate=True))
            except binascii.Error as error:
                raise InvalidArgument(f"commit line {number}: bad base64 ({error})") from None
        return blob.publish()[0]


def _store_inline(value: dict[str, Any], store: BlobStore, limit: int) -> str:
    content = value["content"]
    if not isinstance(content, str):
        raise InvalidArgument(f"file {value['path']!r}: content must be a string")
    if value.get("encoding") == "base64":
        try:
            data = base64.b64decode(content, validate=True)
        except ValueError as error:  # binascii.Error, or text that is not even ASCII
            raise InvalidArgument(f"file {value['path']!r}: bad base64 ({error})") from None
    else:
        data = check_text(content, f"content of {value['path']!r}").encode()
    with store.writer(limit=limit) as blob:
        blob.write(data)
        return blob.publish()[0]


def _apply_item(
    commit: Commit,
    item: dict[str, Any],
    stored: str | None,
    store: BlobStore,
    limit: int,
    usable: Callable[[str], bool],
) -> None:
    key, value = item.get("key"), item.get("value")
    if not isinstance(value, dict):
        raise TypeError("'value' must be an object")
    if key == "header":
        commit.header = value
        return
    path = value["path"]
    if not isinstance(path, str):
        raise TypeError("'path' must be a string")
    if key == "file":
        safe = safe_relative_path(path)  # refused before anything is stored
        commit.operations.append(("add", safe, stored or _store_inline(value, store, limit)))
    elif key == "lfsFile":
        oid = str(value["oid"])
        if not DIGEST.fullmatch(oid) or not usable(oid):
            raise InvalidArgument(f"LFS object {oid[:64]!r} for {path!r} was not uploaded")
        commit.operations.append(("add", safe_relative_path(path), oid))
    elif key == "deletedFile":
        commit.operations.append(("delete", path, ""))
    elif key == "deletedFolder":
        commit.operations.append(("delete_folder", path.rstrip("/") + "/", ""))
    else:
        raise InvalidArgument(f"unsupported commit operation {key!r}")


def apply_commit(
    registry: Registry, repo: str, commit: Commit, base_dirs: Sequence[Path] = ()
) -> PushResult:
    """Apply ``commit`` to the latest files of ``repo`` and push the result like `hub push`
    (``base_dirs``: the server's allow-list for base folders, see ``Registry.push``). Call it
    holding the store lock (shared), as ``stage_files`` says.

    Nothing in the process serializes commits (another worker or host may commit at the
    same moment): the catalog's commit transaction checks that the head this commit was
    built on is still the head. A commit that names its ``parentCommit`` is applied on
    that head only, as the Hub does. One that names none is applied on whatever the head
    is: when another commit got in first, it is built again on the new head, so neither
    commit's files are lost.

    Raises:
        HeadMoved: the commit names a parent that is not the head (412), or
            ``COMMIT_ATTEMPTS`` other commits got in first (409: send it again).
        InvalidAdapter: the resulting files are not a valid adapter.
    """
    parent = commit.header.get("parentCommit")
    for _ in range(COMMIT_ATTEMPTS):
        files, head = _head_files(registry, repo)
        if parent and parent != head:
            raise HeadMoved(
                f"{repo} moved on: parent commit {str(parent)[:12]} is not the head {head[:12]}"
                " (fetch the latest revision and commit again)",
                repo=repo,
                expected=str(parent),
                head=head,
                status=412,
            )
        try:
            return _push_on(registry, repo, commit, files, head, base_dirs)
        except HeadMoved:
            if parent:
                raise
    raise HeadMoved(
        f"{repo} is busy: {COMMIT_ATTEMPTS} other commits got in while this one was applied;"
        " send it again",
        repo=repo,
        expected=head,
        head=None,
        status=409,
    )


def _head_files(registry: Registry, repo: str) -> tuple[dict[str, str], str]:
    """The head's files (path -> sha256) and commit; for a repository with no version, none
    and the commit of no files (created here if missing)."""
    try:
        latest = registry.show(repo)
    except AdapterNotFound:
        registry.create_repo(repo)
        return {}, commit_id(None, [])
    except RevisionNotFound:  # created, not yet committed to
        return {}, commit_id(None, [])
    return {f.path: f.sha256 for f in latest.files}, latest.commit


def _push_on(
    registry: Registry,
    repo: str,
    commit: Commit,
    files: dict[str, str],
    head: str,
    base_dirs: Sequence[Path],
) -> PushResult:
    """Apply the operations to ``files`` (the head ``head``'s) and push the result, expecting
    ``head`` still to be the head (else ``HeadMoved``, from the commit's transaction)."""
    files = dict(files)
    for kind, path, digest in commit.operations:
        if kind == "add":
            files[path] = digest
        elif kind == "delete":
            files.pop(path, None)
        else:
            files = {p: d for p, d in files.items() if not p.startswith(path)}
    check_file_tree(files)
    if "adapter_config.json" not in files:
        raise InvalidAdapter(
            f"{repo}: the commit leaves no adapter_config.json; this hub stores PEFT adapters"
        )
    with tempfile.TemporaryDirectory(dir=registry.home / "tmp") as tmp:
        folder = stage_files(registry, Path(tmp) / repo.split("/")[1], files)
        return registry.push(folder, name=repo, base_dirs=base_dirs, expected_head=head)
