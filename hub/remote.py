"""Client of a team hub's native API (``hub serve``): push, pull and search over HTTP.

Errors the server raises come back as the same ``HubError`` subclasses (by their ``code``).
Downloads resume from a ``*.incomplete`` file with HTTP Range, and every file is checked
against its sha256 before it is renamed into place; uploads send only the blobs the server
lacks, and the server checks each against its sha256 before it becomes visible.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.blobstore import CHUNK, sha256_file
from hub.errors_http import error_from_http
from hub.progress import byte_progress
from schemas.api import MAX_JSON_BYTES, MAX_PUSH_FILES
from schemas.errors import (
    AuthError,
    HubError,
    InvalidArgument,
    OutputExists,
    StoreCorrupted,
)

if TYPE_CHECKING:
    from hub.registry import PushResult

API = "/api/hub/v1"


def raise_for_error(error: urllib.error.HTTPError) -> None:
    """Turn the server's ``{"error": {"code", "message"}}`` back into the matching HubError
    (or a Hugging Face route's ``{"error": message}``, its code in ``X-Error-Code``), by the
    table the server answers with (``hub.errors_http``)."""
    raise error_from_http(error.code, error.headers, error.read()) from None


class RemoteRegistry:
    """A team hub at ``url``, with an optional bearer ``token`` (``HUB_TOKEN``).

    Example:
        >>> remote = RemoteRegistry("http://hub.internal:8000", token=os.environ["HUB_TOKEN"])
        >>> remote.push("out/sql-lora", name="team/sql-lora", tasks=["sql"])  # doctest: +SKIP
        >>> remote.pull("team/sql-lora@v1", "adapters/sql")                    # doctest: +SKIP
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    # -- transport ------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        stream: Any = None,
    ) -> Any:
        request = urllib.request.Request(
            self.url + path,
            data=stream if stream is not None else body,
            method=method,
            headers=dict(headers or {}),
        )
        if self.token:
            # Not carried along a redirect: a download redirected to an object store's
            # presigned URL must not show it our token (and S3 refuses a second credential).
            request.add_unredirected_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            raise_for_error(error)
        except urllib.error.URLError as error:
            raise HubError(f"cannot reach the hub at {self.url}: {error.reason}") from None
        except (http.client.HTTPException, ConnectionError) as error:
            # The server went away mid-request (a worker killed, restarted): retrying is safe,
            # a push of content already committed stores nothing new.
            raise HubError(
                f"cannot reach the hub at {self.url}: the connection was lost"
                f" ({type(error).__name__}); retry"
            ) from None

    def _json(self, method: str, path: str, payload: Any = None) -> Any:
        body = json.dumps(payload).encode() if payload is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        with self._request(method, path, body=body, headers=headers) as response:
            return json.loads(response.read())

    @staticmethod
    def _repo_path(ref: str) -> tuple[str, str | None]:
        from schemas.refs import AdapterRef

        parsed = AdapterRef.parse(ref)
        return f"{API}/adapters/{parsed.namespace}/{parsed.name}", parsed.revision

    # -- reads ----------------------------------------------------------------------------
    def search_raw(
        self,
        query: str | None = None,
        *,
        base: str | None = None,
        method: str | None = None,
        library: str | None = None,
        rank: str | int | None = None,
        tasks: Iterable[str] = (),
        tags: Iterable[str] = (),
        sort: str | None = None,
        limit: int | None = None,
        all_versions: bool = False,
        where: Iterable[str] = (),
    ) -> list[dict[str, Any]]:
        params: list[tuple[str, str]] = [
            (k, str(v))
            for k, v in (
                ("q", query),
                ("base", base),
                ("method", method),
                ("library", library),
                ("rank", rank),
                ("sort", sort),
                ("limit", limit),
            )
            if v is not None
        ]
        params += [("task", t) for t in tasks] + [("tag", t) for t in tags]
        params += [("where", w) for w in where]
        if all_versions:
            params.append(("all_versions", "true"))
        result: list[dict[str, Any]] = self._json(
            "GET", f"{API}/adapters?{urllib.parse.urlencode(params)}"
        )
        return result

    def show(self, ref: str) -> Any:
        from schemas.card import AdapterCard

        path, revision = self._repo_path(ref)
        query = f"?{urllib.parse.urlencode({'revision': revision})}" if revision else ""
        return AdapterCard.model_validate(self._json("GET", path + query))

    def evals(self, ref: str) -> list[dict[str, Any]]:
        """The eval records of the version ``ref`` names, oldest first."""
        path, revision = self._repo_path(ref)
        query = f"?{urllib.parse.urlencode({'revision': revision})}" if revision else ""
        records: list[dict[str, Any]] = self._json("GET", f"{path}/evals{query}")
        return records

    def post_eval(
        self,
        record: dict[str, Any],
        dataset: Path,
        per_example: bytes,
        blobs: Sequence[tuple[str, Path | bytes]] = (),
    ) -> Any:
        """Store ``record`` (measured here on a version of this hub) on the server: the
        dataset file, the per-example results and ``blobs`` (digest, file or bytes: a
        ``--forgetting`` text and its per-document sums) are uploaded first, unless the
        server has them for this token already.

        Raises:
            AuthError: the token may not write the version's namespace.
        """
        path, _ = self._repo_path(record["ref"])
        every: list[tuple[str, Path | bytes]] = [
            (record["dataset"]["sha256"], dataset),
            (record["results_sha256"], per_example),
            *blobs,
        ]
        for digest, send in every:
            size = send.stat().st_size if isinstance(send, Path) else len(send)
            try:
                self._request("HEAD", f"{API}/blobs/{digest}").close()
            except AuthError:
                raise
            except HubError:
                if isinstance(send, Path):
                    self._upload(send, digest, size, send.name)
                else:
                    self._request(
                        "PUT",
                        f"{API}/blobs/{digest}",
                        body=send,
                        headers={"Content-Type": "application/octet-stream"},
                    ).close()
        return self._json("POST", f"{path}/evals", {"record": record})

    def versions(self, repo: str) -> list[Any]:
        """Every version of ``repo``, oldest first (cards)."""
        from schemas.card import AdapterCard

        path, _ = self._repo_path(repo)
        return [AdapterCard.model_validate(c) for c in self._json("GET", f"{path}/versions")]

    # -- writes ---------------------------------------------------------------------------
    def tag(self, ref: str, alias: str) -> Any:
        """Point ``alias`` at the version ``ref`` names, like ``hub tag``; returns its card."""
        from schemas.card import AdapterCard

        path, revision = self._repo_path(ref)
        url = f"{path}/aliases/{urllib.parse.quote(alias, safe='')}"
        return AdapterCard.model_validate(self._json("PUT", url, {"revision": revision or "main"}))

    def remove(self, ref: str) -> list[Any]:
        """Remove a repository, or one version (``ns/name@v2``), like ``hub rm``."""
        from schemas.card import AdapterCard

        path, revision = self._repo_path(ref)
        query = f"?{urllib.parse.urlencode({'revision': revision})}" if revision else ""
        return [AdapterCard.model_validate(c) for c in self._json("DELETE", path + query)]

    # -- push -----------------------------------------------------------------------------
    def push(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        tasks: Iterable[str] = (),
        tags: Sequence[str] = (),
        metrics: Iterable[str] = (),
        parent: str | None = None,
        description: str | None = None,
        allow_nonfinite: bool = False,
    ) -> tuple[Any, bool]:
        """``push_result(...)``'s ``(card, created)``: the card of the folder's top adapter
        (a multi-adapter folder's other repositories are in ``push_result``'s ``others``)."""
        result = self.push_result(
            path,
            name=name,
            tasks=tasks,
            tags=tags,
            metrics=metrics,
            parent=parent,
            description=description,
            allow_nonfinite=allow_nonfinite,
        )
        return result.card, result.created

    def push_result(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        tasks: Iterable[str] = (),
        tags: Sequence[str] = (),
        metrics: Iterable[str] = (),
        parent: str | None = None,
        description: str | None = None,
        allow_nonfinite: bool = False,
    ) -> PushResult:
        """Inspect locally (same checks as a local push), upload missing blobs, commit.

        The commit request is built (and checked against the server's limits) before any
        upload, so a push the server would refuse costs no transfer. A multi-adapter save
        (a subfolder per adapter besides ``default``) becomes one repository per adapter on
        the server, ``name`` and ``name-<adapter>``, as with a local ``Registry.push``; every
        adapter is inspected here before anything is uploaded.

        Returns:
            ``PushResult(card, created, left_out, others)``, as ``Registry.push`` gives.

        Raises:
            InvalidArgument: the folder has more files, or a longer file list, than one
                push may carry.
        """
        from hub.folders import adapter_files
        from hub.inspect import extra_adapters, inspect_adapter
        from hub.inspect.files import training_outputs
        from hub.registry import PushResult
        from schemas.card import AdapterCard, parse_tags
        from schemas.refs import validate_repo_id

        folder = Path(path)
        repo = validate_repo_id(name or f"{os.environ.get('USER', 'local')}/{folder.name}")
        on_disk = adapter_files(folder)  # the push rule first: nothing read through a bad link
        extras = extra_adapters(folder)
        for sub in extras:  # the names the server will give them, refused here if invalid
            validate_repo_id(f"{repo}-{sub}")
        # Fail fast, before uploading: every adapter of the folder, as a local push checks.
        if (folder / "adapter_config.json").is_file() or not extras:
            inspect_adapter(folder, allow_nonfinite=allow_nonfinite)
        for sub in extras:
            inspect_adapter(folder / sub, allow_nonfinite=allow_nonfinite)
        from hub.eval_import import read_imports

        read_imports(folder)  # a malformed model-index or result file, before uploading too
        from hub.checkpoints import read_trainer_state

        # trainer_state.json and the checkpoint folders stay here (training state): what they
        # say travels with the push instead, for the server's record of it.
        trained = read_trainer_state(folder)
        local_files = on_disk
        if len(local_files) > MAX_PUSH_FILES:
            raise InvalidArgument(
                f"{folder}: {len(local_files)} files, over the {MAX_PUSH_FILES} one push may"
                " hold (leave out what the adapter does not need)"
            )
        files: list[dict[str, Any]] = [
            {"path": rel, "sha256": sha256_file(local), "size": local.stat().st_size}
            for rel, local in local_files
        ]
        namespace, short = repo.split("/")
        payload = {
            "files": files,
            "tasks": list(tasks),
            "tags": parse_tags(list(tags)),
            "metrics": list(metrics),
            "parent": parent,
            "description": description,
            "allow_nonfinite": allow_nonfinite,
        }
        if trained is not None:
            payload["trainer"] = trained.facts()
        body = json.dumps(payload).encode()
        if len(body) > MAX_JSON_BYTES:
            raise InvalidArgument(
                f"{folder}: the list of its {len(files)} files takes {len(body)} bytes, over"
                f" the {MAX_JSON_BYTES} bytes a push request may hold (leave out what the"
                " adapter does not need, or use shorter file names)"
            )
        for entry, (rel, local) in zip(files, local_files, strict=True):
            try:
                self._request("HEAD", f"{API}/blobs/{entry['sha256']}").close()
            except HubError:
                self._upload(local, entry["sha256"], entry["size"], rel)
        result = self._json("POST", f"{API}/adapters/{namespace}/{short}/versions", payload)

        def pushed(body: dict[str, Any]) -> PushResult:
            created = bool(body.pop("created"))
            body.pop("others", None)
            return PushResult(AdapterCard.model_validate(body), created)

        others = [pushed(other) for other in result.get("others") or []]
        top = pushed(result)
        return PushResult(top.card, top.created, training_outputs(folder), others=others)

    def _upload(self, local: Path, digest: str, size: int, label: str) -> None:
        bar = byte_progress(f"upload {label}", size)

        def chunks() -> Iterable[bytes]:
            with open(local, "rb") as fh:
                while data := fh.read(CHUNK):
                    bar.update(len(data))
                    yield data

        try:
            self._request(
                "PUT",
                f"{API}/blobs/{digest}",
                stream=chunks(),
                headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
            ).close()
        finally:
            bar.close()

    # -- pull -----------------------------------------------------------------------------
    def pull(
        self,
        ref: str,
        dest: str | os.PathLike[str] | None = None,
        *,
        force: bool = False,
        with_evals: bool = False,
    ) -> Path:
        """Download ``ref`` into ``dest`` (default ``./NAME``): resumable, sha256-checked,
        assembled next to ``dest`` and renamed into place at the end (with ``force``, the
        old folder is moved aside first and removed only once the new one is in place).
        ``with_evals``: the card's metrics go into the README as a ``model-index``."""
        from compose.staging import staged_folder

        card = self.show(ref)
        target = Path(dest) if dest is not None else Path.cwd() / card.repo.split("/")[1]
        if target.exists() and not force and (not target.is_dir() or any(target.iterdir())):
            raise OutputExists(
                f"{target} already exists and is not empty (choose another -o or pass --force)"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        # Partial downloads live next to the target and survive a failure, for resuming.
        partial = target.parent / f".{target.name}.hub-download"
        with staged_folder(target, force=force) as staging:
            for entry in card.files:
                out = staging / entry.path
                if not out.resolve().is_relative_to(staging.resolve()):
                    raise StoreCorrupted(f"server sent a file path that escapes: {entry.path!r}")
                out.parent.mkdir(parents=True, exist_ok=True)
                blob = partial / entry.sha256
                self._download(entry.sha256, entry.size, blob, entry.path)
                os.replace(blob, out)
            if with_evals:
                from hub.model_index import write_model_index

                write_model_index(staging, card)
        shutil.rmtree(partial, ignore_errors=True)
        return target

    def _download(self, digest: str, size: int, dest: Path, label: str) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        have = dest.stat().st_size if dest.exists() else 0
        if have > size:
            dest.unlink()
            have = 0
        if have < size:
            headers = {"Range": f"bytes={have}-"} if have else {}
            bar = byte_progress(f"pull {label}", size)
            bar.update(have)
            try:
                with self._request("GET", f"{API}/blobs/{digest}", headers=headers) as response:
                    resumed = response.status == 206
                    with open(dest, "ab" if resumed else "wb") as fh:
                        while data := response.read(CHUNK):
                            fh.write(data)
                            bar.update(len(data))
            finally:
                bar.close()
        if sha256_file(dest) != digest:
            dest.unlink()
            raise StoreCorrupted(f"downloaded {label} does not match its sha256; pull again")
