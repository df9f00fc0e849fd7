"""Interop with a Hugging Face Hub (the public one, or any server speaking its protocol):
``hub pull hf://org/name`` and ``hub push REF --to hf://org/name``, through huggingface_hub.

The endpoint and token come from the usual HF settings (``HF_ENDPOINT``, ``HF_TOKEN`` or the
cached login).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from schemas.errors import AdapterNotFound, InvalidName, OutputExists
from schemas.refs import validate_repo_id

if TYPE_CHECKING:
    from hub.registry import Registry

PREFIX = "hf://"


def is_hf(target: str | None) -> bool:
    return bool(target) and str(target).startswith(PREFIX)


def parse_hf(spec: str) -> tuple[str, str | None]:
    """``hf://org/name[@revision]`` -> (repo id, revision)."""
    repo, _, revision = spec.removeprefix(PREFIX).partition("@")
    try:
        validate_repo_id(repo)
    except InvalidName as error:
        raise InvalidName(f"invalid Hugging Face reference {spec!r}: {error}") from None
    return repo, revision or None


def pull_from_hf(spec: str, dest: str | os.PathLike[str] | None, *, force: bool = False) -> Path:
    """Download ``hf://org/name[@rev]`` into ``dest``, assembled aside and renamed into place."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    from compose.staging import staged_folder

    repo, revision = parse_hf(spec)
    target = Path(dest) if dest is not None else Path.cwd() / repo.split("/")[1]
    if target.exists() and not force and (not target.is_dir() or any(target.iterdir())):
        raise OutputExists(
            f"{target} already exists and is not empty (choose another -o or pass --force)"
        )
    try:
        # The old folder (with --force) is moved aside and removed only once this is in place.
        with staged_folder(target, force=force) as staging:
            snapshot_download(repo, revision=revision, local_dir=staging)
            shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise AdapterNotFound(f"{spec}: {str(error).splitlines()[0]}", repo=repo) from None
    return target


def push_to_hf(registry: Registry, source: str, spec: str) -> str:
    """Upload a registry reference (or an adapter folder) to ``hf://org/name``; returns the
    commit id the Hub gave the upload."""
    from huggingface_hub import HfApi

    repo, revision = parse_hf(spec)
    api = HfApi()
    with tempfile.TemporaryDirectory(prefix="hub-hf-") as tmp:
        if Path(source).is_dir():
            folder = Path(source)
        else:
            folder = registry.link_files(registry.show(source), Path(tmp) / "adapter")
        api.create_repo(repo, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo,
            revision=revision,
            commit_message=f"Upload {source} with hub",
        )
    return str(info.oid)
