"""Adapters saved by other trainers, recognised without torch and converted to PEFT folders.

The hub stores PEFT folders. Two other common layouts are recognised so that ``hub push`` can
name them and the command that converts them (``hub convert``):

- **mlx-lm** (``mlx_lm.lora``): ``adapters.safetensors`` with keys ``<module>.lora_a`` of
  shape (in, r) and ``<module>.lora_b`` of shape (r, out), and an ``adapter_config.json``
  holding the training arguments: ``fine_tune_type`` (``lora``, ``dora``, ``full``),
  ``num_layers``, ``lora_parameters`` ``{rank, scale, dropout, keys?}``. See ``hub.formats.mlx``.
- **torchtune** (LoRA recipes): ``adapter_model.pt`` (a pickle; ``adapter_<epoch>.pt`` in
  torchtune < 0.3) or ``adapter_model.safetensors`` with keys such as
  ``layers.0.attn.q_proj.lora_a.weight``, and maybe an ``adapter_config.json``
  ``{r, lora_alpha, target_modules, peft_type}`` in torchtune's module names. See
  ``hub.formats.torchtune``.

A folder that is neither, but holds a Trainer's ``checkpoint-<step>/`` folders and no adapter
of its own, is refused with the ``--checkpoints`` command.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from schemas.errors import ForeignFormat, InvalidAdapter

MLX_WEIGHTS = "adapters.safetensors"
TORCHTUNE_WEIGHTS = "adapter_model.pt"
_TORCHTUNE_OLD_WEIGHTS = re.compile(r"adapter_\d+\.pt")
_TORCHTUNE_KEY = re.compile(r"(^|\.)lora_[ab]\.weight$")
_CONFIG = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."


def detect(folder: Path) -> str | None:
    """``"mlx-lm"`` or ``"torchtune"`` when ``folder`` holds such an adapter, else None.

    Reads only file names, ``adapter_config.json`` and safetensors headers (no torch).
    """
    config = _config(folder)
    if (folder / MLX_WEIGHTS).is_file() or (
        "peft_type" not in config and ("lora_parameters" in config or "fine_tune_type" in config)
    ):
        return "mlx-lm"
    if torchtune_weights(folder) is not None:
        return "torchtune"
    return None


def torchtune_weights(folder: Path) -> Path | None:
    """The torchtune weights file of ``folder``: ``adapter_model.safetensors`` whose keys are
    torchtune's, else ``adapter_model.pt`` / ``adapter_<N>.pt`` when no PEFT weights are
    beside it; None for a PEFT folder."""
    safetensors = folder / "adapter_model.safetensors"
    if safetensors.is_file():
        keys = _safetensors_keys(safetensors)
        peft = any(k.startswith(_PEFT_PREFIX) for k in keys)
        if not peft and any(_TORCHTUNE_KEY.search(k) for k in keys):
            return safetensors
        return None  # PEFT's (torchtune writes a PEFT copy beside its .pt too)
    if (folder / TORCHTUNE_WEIGHTS).is_file():
        return folder / TORCHTUNE_WEIGHTS
    if (folder / "adapter_model.bin").is_file():
        return None  # PEFT's pickle: `hub convert` turns it into safetensors
    old = sorted(p for p in folder.glob("adapter_*.pt") if _TORCHTUNE_OLD_WEIGHTS.fullmatch(p.name))
    return old[-1] if old else None


def refuse_foreign(folder: Path) -> None:
    """Raise the error that names what ``folder`` is when it is not a PEFT folder but a known
    other layout; return quietly otherwise (the PEFT reader reports anything else).

    Raises:
        ForeignFormat: an mlx-lm or torchtune adapter, with the ``hub convert`` command.
        InvalidAdapter: a Trainer output folder with checkpoints but no adapter of its own.
    """
    from hub.inspect.files import checkpoint_folders

    fmt = detect(folder)
    if fmt == "mlx-lm":
        config = _config(folder)
        kind = config.get("fine_tune_type", "lora")
        if kind == "full":
            raise ForeignFormat(
                f"{folder} is an mlx-lm full fine-tune (fine_tune_type 'full' in {_CONFIG}):"
                " its adapters.safetensors holds whole weights, not an adapter, so there is"
                " nothing to register (fuse it into a model with mlx_lm.fuse)",
                format="mlx-lm",
                path=str(folder),
            )
        raise ForeignFormat(
            f"{folder} is an mlx-lm adapter ({MLX_WEIGHTS}, fine_tune_type {kind!r}), not a PEFT"
            f" folder: convert it with `hub convert {folder}`, then push the converted folder",
            format="mlx-lm",
            path=str(folder),
        )
    if fmt == "torchtune":
        weights = torchtune_weights(folder)
        assert weights is not None
        raise ForeignFormat(
            f"{folder} is a torchtune adapter ({weights.name} with torchtune's module names,"
            f" e.g. 'layers.0.attn.q_proj.lora_a.weight'), not a PEFT folder: convert it with"
            f" `hub convert {folder} --base BASE_MODEL_FOLDER`, then push the converted folder",
            format="torchtune",
            path=str(folder),
        )
    if not (folder / _CONFIG).exists():
        checkpoints = checkpoint_folders(folder)
        if checkpoints:
            names = ", ".join(p.name for _, p in checkpoints[:3])
            more = f" and {len(checkpoints) - 3} more" if len(checkpoints) > 3 else ""
            raise InvalidAdapter(
                f"{folder} is a Trainer output folder with checkpoints ({names}{more}) but no"
                f" adapter of its own: push every checkpoint as a version with"
                f" `hub push {folder} --checkpoints`, or one with"
                f" `hub push {checkpoints[-1][1]}`",
                path=str(folder),
            )


def _config(folder: Path) -> dict[str, Any]:
    """``adapter_config.json`` as a dict, or {} when missing or unreadable (reported later)."""
    try:
        config = json.loads((folder / _CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _safetensors_keys(path: Path) -> list[str]:
    from hub.inspect.safetensors_header import read_safetensors_header

    try:
        tensors, _ = read_safetensors_header(path)
    except InvalidAdapter:
        return []  # a corrupt file is reported by the PEFT reader, with its details
    return list(tensors)
