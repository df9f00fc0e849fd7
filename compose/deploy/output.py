"""Export outputs: the disk-space check and the provenance model card. Every format is
written through ``compose.staging.staged_folder``: whole or not at all, and a SIGKILL's
leftover is removed by the next export to the same place."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from compose.staging import check_output, staged_folder
from schemas.errors import InsufficientDiskSpace

__all__ = ["check_disk_space", "check_output", "model_card", "staged_folder"]

# Headroom on top of the estimate: metadata, tokenizer files, filesystem slack.
_SLACK = 16 * 1024 * 1024


def check_disk_space(target: Path, needed: int) -> None:
    """Refuse up front when the filesystem of ``target`` cannot hold ``needed`` bytes.

    Raises:
        InsufficientDiskSpace: with the sizes and the folder.
    """
    probe = target.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed + _SLACK > free:
        raise InsufficientDiskSpace(
            f"not enough disk space for {target}: the export needs about {_gib(needed)},"
            f" {_gib(free)} is free on {probe}",
            path=str(target),
            needed=needed,
            free=free,
        )


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**27 else f"{size / 2**20:.1f} MiB"


def model_card(
    *,
    title: str,
    fmt: str,
    base: str,
    adapters: list[str],
    details: dict[str, Any],
    recipe: dict[str, Any] | None = None,
) -> str:
    """A README.md with YAML front matter recording where the exported weights came from."""
    import yaml

    front: dict[str, Any] = {
        "base_model": base,
        "tags": ["hub-export", fmt, "merged" if fmt != "vllm-bundle" else "multi-lora"],
        "hub_export": {
            "format": fmt,
            "base": base,
            "adapters": adapters,
            **({"recipe": recipe} if recipe else {}),
            **details,
        },
    }
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {title}",
        "",
        f"Exported by `hub export --format {fmt}` from the base `{base}` with, applied in order:",
        "",
        *[f"{i}. `{ref}`" for i, ref in enumerate(adapters, start=1)],
        "",
    ]
    lines += [f"- {key}: `{value}`" for key, value in details.items()]
    return "\n".join(lines) + "\n"
