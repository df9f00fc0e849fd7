"""One weight edit on one named base tensor, and the checks every edit builder shares.

``compose.deploy.method_edits`` builds each method's ``Edit`` objects from its factors,
``compose.deploy.adapters`` reads an adapter folder into them and ``compose.deploy.merged``
applies them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compose.deploy.base import BaseFolder
from compose.deploy.experts import memory_map
from schemas.errors import IncompatibleAdapters, InvalidAdapter

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class LoraFactors:
    """A plain LoRA edit, kept factored for formats that ship the adapter (gguf-lora, vLLM)."""

    a: Tensor
    b: Tensor
    scale: float
    embedding: bool = False


@dataclass
class Edit:
    """One change to one base tensor."""

    target: str
    """Base tensor name, e.g. ``model.layers.0.self_attn.q_proj.weight``."""
    module: str
    kind: str
    """``lora``, ``dora``, ``embedding-lora``, ``ia3``, ``loha``, ``lokr``, ``adalora``,
    ``vera``, ``bias`` (lora_bias), ``trained-bias`` (``bias="all"``/``"lora_only"``: replaces
    the base's), ``replace`` (modules_to_save, saved embedding weights), ``tokens`` (trainable
    token rows), ``parameter-lora`` / ``expert-lora`` (``target_parameters``), or a LoRA
    variant's name (``bdlora``, ``kasa``...): the formats that ship plain LoRA factors
    (gguf-lora, vLLM) accept ``lora`` only."""
    apply: Callable[[Tensor], Tensor]
    """fp32 weight -> new fp32 weight."""
    lora: LoraFactors | None = None
    rows: Callable[[Tensor, slice], Tensor] | None = None
    """The same edit on a block of the weight's rows (fp32, changed in place where it can be),
    or None when the edit needs the whole weight (DoRA on a transposed layer, LoHa...). Merging
    block by block keeps the fp32 working set small and in cache (see ``merged.py``)."""


def pattern_value(patterns: dict[str, Any] | None, module: str, default: Any) -> Any:
    """PEFT's ``get_pattern_key``: the first pattern matching the end of the module name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def check_shape(label: str, module: str, expected: tuple[int, ...], got: tuple[int, ...]) -> None:
    if tuple(expected) != tuple(got):
        raise IncompatibleAdapters(
            f"adapter {label}: module {module} changes a {list(got)} weight but the base's is"
            f" {list(expected)} (the base does not match the adapter)",
            adapter=label,
            module=module,
            expected=list(expected),
            got=list(got),
        )


def target_tensor(base: BaseFolder, module: str, label: str, param: str = "weight") -> str:
    target = base.resolve(module, param)
    if target is None:
        # A module transformers renames when it loads (Mixtral's block_sparse_moe -> mlp).
        parts = memory_map(base).get(f"{module}.{param}")
        if parts is not None and len(parts) == 1 and parts[0].expert is None:
            return parts[0].name
    if target is None:
        raise IncompatibleAdapters(
            f"adapter {label}: module {module} is not in the base {base.path}"
            " (the base does not match the adapter)",
            adapter=label,
            module=module,
        )
    return target


def need_factors(
    factors: dict[str, Tensor], names: tuple[str, ...], module: str, label: str
) -> None:
    missing = [n for n in names if n not in factors]
    if missing:
        raise InvalidAdapter(f"adapter {label}: module {module} lacks {', '.join(missing)}")
