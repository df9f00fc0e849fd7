"""Pushing AdapterHub saves: the refusal of pickle-only weights, with the safe routes.

The format's facts (file names, config layout) live in ``compose.adapterhub``; the card is
built by ``hub.inspect.adapterhub``; ``hub convert`` turns the pickles into safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compose.adapterhub import (
    HEAD_CONFIG,
    PICKLE_HEAD_WEIGHTS,
    PICKLE_TO_SAFETENSORS,
    SAVE_WITH_SAFETENSORS,
    uses_prefix_tuning,
)
from schemas.errors import UnsafeFormat


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
