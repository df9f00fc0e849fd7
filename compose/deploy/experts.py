"""LoRA on parameters (PEFT's ``target_parameters``): MoE expert stacks and routers.

PEFT's ``lora.ParamWrapper`` adapts a parameter by its in-memory name, e.g. Mixtral's
``model.layers.0.mlp.experts.gate_up_proj`` of shape ``(experts, 2 * inter, hidden)``. Checkpoints
often store it otherwise: transformers 5 converts ``block_sparse_moe.experts.N.w1.weight`` and
``w3`` (one matrix per expert) into that stack when it loads, and back when it saves. The memory
-> disk map here comes from transformers' own conversion table for the base's ``model_type``
(renamings, and experts merged with ``MergeModulelist`` / ``Concatenate``), so each expert's delta
lands on the rows of the file tensor it came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from schemas.errors import IncompatibleAdapters

if TYPE_CHECKING:
    from torch import Tensor

    from compose.deploy.base import BaseFolder


@dataclass(frozen=True)
class Part:
    """Where (part of) an in-memory parameter is stored in the base's files."""

    name: str
    """The base tensor."""
    expert: int | None
    """Its expert in the in-memory stack; None when the tensor is the whole parameter."""
    rows: slice
    """The rows of the expert's matrix it holds (``Concatenate(dim=1)`` of the stack)."""


def memory_map(base: BaseFolder) -> dict[str, list[Part]]:
    """In-memory parameter name -> its parts in the base's files, for every base tensor that
    transformers renames or merges when loading (an empty map for architectures it keeps)."""
    cached = getattr(base, "_memory_map", None)
    if cached is not None:
        return cached
    result: dict[str, list[Part]] = {}
    renamings, converters = _conversions(base)
    if renamings or converters:
        from transformers.core_model_loading import apply_converters, apply_renamings

        pending: dict[str, dict[int, dict[int, str]]] = {}
        sources: dict[str, list[str]] = {}
        for name in base.tensors:
            renamed = apply_renamings(name, renamings)
            target, pattern = apply_converters(renamed, converters)
            if pattern is None:
                if target != name:
                    result[target] = [Part(name, None, slice(0, base.tensors[name].shape[0]))]
                continue
            converter = next(c for c in converters if pattern in c.source_patterns)
            _check_operations(converter, base)
            expert = _expert_index(pattern, renamed)
            index = converter.source_patterns.index(pattern)
            pending.setdefault(target, {}).setdefault(expert, {})[index] = name
            sources[target] = converter.source_patterns
        for target, experts in pending.items():
            parts = []
            for expert, by_source in sorted(experts.items()):
                offset = 0
                for index in range(len(sources[target])):
                    name = by_source[index]
                    rows = base.tensors[name].shape[0]
                    parts.append(Part(name, expert, slice(offset, offset + rows)))
                    offset += rows
            result[target] = parts
    object.__setattr__(base, "_memory_map", result)
    return result


def _conversions(base: BaseFolder) -> tuple[list[Any], list[Any]]:
    model_type = base.text_config().get("model_type") or base.config.get("model_type")
    if not isinstance(model_type, str):
        return [], []
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming
    except ImportError:  # an older transformers: memory names are the file names
        return [], []
    transforms = get_checkpoint_conversion_mapping(model_type) or []
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    return renamings, converters


def _check_operations(converter: Any, base: BaseFolder) -> None:
    """Only per-expert matrices stacked (``MergeModulelist(dim=0)``), optionally joined along
    their rows (``Concatenate(dim=1)``), are mapped back; anything else is refused."""
    ops = [(type(op).__name__, getattr(op, "dim", None)) for op in converter.operations]
    if ops not in ([("MergeModulelist", 0)], [("MergeModulelist", 0), ("Concatenate", 1)]):
        raise IncompatibleAdapters(
            f"base {base.path}: transformers builds {converter.target_patterns[0]!r} from"
            f" {converter.source_patterns} with {[name for name, _ in ops]}, which hub cannot map"
            " back to the base's files for a parameter LoRA; re-save the base with"
            " transformers >= 5 (fused expert tensors) and export again"
        )


def _expert_index(pattern: str, name: str) -> int:
    regex = re.escape(pattern).replace(r"\*", r"(\d+)")
    match = re.search(regex, name)
    assert match is not None, (pattern, name)
    return int(match.group(1))


def parameter_shape(base: BaseFolder, parts: list[Part]) -> tuple[int, ...]:
    """The in-memory shape of a parameter stored as ``parts``."""
    if len(parts) == 1 and parts[0].expert is None:
        return base.shape(parts[0].name)
    experts = 1 + max(p.expert for p in parts if p.expert is not None)
    rows = max(p.rows.stop for p in parts)
    return (experts, rows, *base.shape(parts[0].name)[1:])


def expert_delta(
    a: Tensor, b: Tensor, scale: float, shape: tuple[int, ...], expert: int, rows: slice
) -> Tensor:
    """Rows ``rows`` of expert ``expert``'s delta in a 3-D ``(experts, d1, d2)`` parameter, as
    PEFT's ``ParamWrapper.get_delta_weight`` computes them (fp32, ``(rows, d2)``).

    ``lora_A`` is ``(r * experts, in)`` with each expert's r rows together; ``lora_B`` is
    ``(out, r * experts)`` with the expert index varying fastest. ``(in, out)`` is ``(d2, d1)``
    for the usual ``(experts, out, in)`` layout, ``(d1, d2)`` for a transposed one (gpt-oss).
    One expert at a time: the whole stack's delta is as large as the experts themselves.

    Raises:
        ValueError: factor shapes that fit neither layout (or both, for square experts).
    """
    experts, d1, d2 = shape
    rank = a.shape[0] // experts
    a_e = a.reshape(experts, rank, a.shape[1])[expert]  # (r, in)
    b_e = b.reshape(b.shape[0], rank, experts)[:, :, expert]  # (out, r)
    usual = a.shape[1] == d2 and b.shape[0] == d1
    transposed = a.shape[1] == d1 and b.shape[0] == d2
    if usual == transposed:
        raise ValueError(f"lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} for {shape}")
    if usual:
        return (b_e[rows] @ a_e) * scale
    return (a_e[:, rows].T @ b_e.T) * scale
