"""How PEFT matches module names against config patterns (no torch; shared by inspect and
compose so both read a config exactly as PEFT does)."""

from __future__ import annotations

import re
from typing import Any


def pattern_value(pattern: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key matching the module's name
    suffix (``(.*\\.)?KEY$``) wins, else the default."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def module_matches(module: str, names: list[str] | str | None) -> bool:
    """Whether ``module`` is selected by a target list / regex, as PEFT decides it."""
    if names is None:
        return False
    if isinstance(names, str):
        if names == "all-linear":
            return True
        return re.fullmatch(names, module) is not None
    return any(module == name or module.endswith("." + name) for name in names)


ADALORA_INIT_R = 12
"""``AdaLoraConfig.init_r``'s default, for a config that does not say."""


def adalora_mask_module(key: str) -> str:
    """The module an AdaLoRA ``rank_pattern`` key names.

    AdaLoRA's allocator writes one boolean mask per ``lora_E`` parameter, keyed by its name in
    the wrapped model (``model.layers.0.self_attn.q_proj.lora_E``; the adapter name that
    follows in memory is stripped when PEFT saves).
    """
    parts = key.removeprefix("base_model.model.").split(".")
    return ".".join(parts[: parts.index("lora_E")] if "lora_E" in parts else parts)


def adalora_scaling(config: dict[str, Any], module: str) -> tuple[float, float]:
    """``(scaling, ranknum)`` of an AdaLoRA module as PEFT loads the folder: its delta is
    ``B (A * E) * scaling / (ranknum + 1e-5)``.

    PEFT builds every module at ``init_r`` (``ranknum = init_r``), then cuts the modules in
    ``rank_pattern`` down to their kept triplets, keeping the old ``ranknum`` ("the scaling is
    exactly as the previous", ``resize_modules_by_rank_pattern``): pruning never rescales the
    kept triplets. ``scaling`` is ``lora_alpha``, or the module's rank when alpha is 0.
    """
    init_r = int(config.get("init_r") or ADALORA_INIT_R)
    masks = {adalora_mask_module(k): v for k, v in (config.get("rank_pattern") or {}).items()}
    rank = sum(bool(v) for v in masks[module]) if module in masks else init_r
    alpha = float(config.get("lora_alpha") or 0)
    return (alpha if alpha > 0 else float(rank)), float(init_r)
