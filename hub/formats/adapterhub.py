"""AdapterHub saves in the hub's operations: the refusal of pickle-only weights (with the
safe routes) and of a merged export (with the reason and the unmerged deployment).

The format's facts (file names, config layout) live in ``compose.adapterhub``; the card is
built by ``hub.inspect.adapterhub``; ``hub convert`` turns the pickles into safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compose.adapterhub import (
    CONFIG,
    HEAD_CONFIG,
    PICKLE_HEAD_WEIGHTS,
    PICKLE_TO_SAFETENSORS,
    SAVE_WITH_SAFETENSORS,
    architecture,
    method_configs,
    uses_prefix_tuning,
)
from schemas.errors import IncompatibleAdapters, UnsafeFormat


def refuse_pickle(folder: Path, config: dict[str, Any]) -> None:
    """Raise ``UnsafeFormat`` when the save's weights (adapter or head) are pickles only.

    The message gives both safe routes: ``hub convert`` (loads tensors only) and saving again
    with safetensors. adapters 1.3.0 cannot save prefix tuning as safetensors (its prefix pool
    is shared by every layer, and safetensors refuses shared tensors): for those only the
    conversion is offered.
    """
    for pickle, safe in PICKLE_TO_SAFETENSORS.items():
        if (folder / pickle).is_file() and not (folder / safe).is_file():
            if pickle == PICKLE_HEAD_WEIGHTS and not (folder / HEAD_CONFIG).is_file():
                continue
            how = (
                " (adapters 1.3.0 cannot save prefix tuning with use_safetensors=True: the"
                " prefix pool is shared by every layer)"
                if uses_prefix_tuning(config)
                else f", or save it again with `{SAVE_WITH_SAFETENSORS}`"
            )
            raise UnsafeFormat(
                f"{folder / pickle} is a pickle file, which hub never loads (it can run code):"
                f" convert it safely with `hub convert {folder}`{how}",
                path=str(folder / pickle),
            )


def _config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def unmerged_reason(folder: Path) -> str | None:
    """Why the save at ``folder`` runs unmerged only, even inside adapters (a bottleneck's
    non-linearity, prefix tuning's key/value positions, a gate); None when adapters'
    ``merge_adapter`` can fold it into the base weights (an ungated LoRA or IA3)."""
    reasons = []
    for block in method_configs(_config(folder)):
        arch = architecture(block)
        if arch == "bottleneck":
            reasons.append(
                f"its bottleneck applies a non-linearity ({block.get('non_linearity')}) between"
                " the down and up projections, so no weight of the base can absorb it"
            )
        elif arch == "prefix_tuning":
            reasons.append("its prefix tuning adds key/value positions at every layer")
        elif block.get("use_gating"):
            reasons.append("its LoRA is gated: the gate depends on the input")
    return "; ".join(dict.fromkeys(reasons)) or None


def merge_refusal(folder: Path, label: str) -> IncompatibleAdapters:
    """The one-line refusal of ``hub export`` for an AdapterHub save, with the reason and the
    unmerged deployment: a bottleneck keeps a non-linearity between its projections, prefix
    tuning adds key/value positions, and AdapterHub's LoRA / IA3 fold in only inside adapters
    (``merge_adapter``), not in PEFT's format the export reads."""
    why = unmerged_reason(folder) or (
        "AdapterHub's LoRA/IA3 folds into the weights only inside adapters"
        " (model.merge_adapter(NAME)), not in the PEFT format hub export merges"
    )
    return IncompatibleAdapters(
        f"adapter {label} is an AdapterHub adapter and cannot be exported merged: {why}."
        f" Deploy it unmerged: `hub pull REF -o DIR`, then adapters'"
        f" model.load_adapter(DIR, use_safetensors=True) on the base (or Registry.load)",
        adapter=label,
    )
