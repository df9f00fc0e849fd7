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


EMBEDDING_LAYERS = ("embed_tokens", "lm_head")
"""PEFT's ``EMBEDDING_LAYER_NAMES``: the layers whose base weights ``save_embedding_layers``
copies into the adapter file."""


def base_weight_copy(name: str) -> tuple[str, str] | None:
    """``(module, param)`` when adapter tensor ``name`` (``base_model.model.`` stripped) is a
    base weight PEFT saved beside the adapter, else None.

    PEFT's ``save_pretrained(save_embedding_layers="auto")`` writes the embedding layers' own
    weights when an adapter targets them (``model.embed_tokens.base_layer.weight``) or when the
    vocabulary was resized for training (``lm_head.weight``). ``PeftModel.from_pretrained``
    loads them over the base's, so they replace the base tensor before the adapter applies.
    """
    module, _, param = name.rpartition(".")
    module = module.removesuffix(".base_layer")
    if param in ("weight", "bias") and module.rsplit(".", 1)[-1] in EMBEDDING_LAYERS:
        return module, param
    return None


TRAINABLE_TOKENS = ".token_adapter.trainable_tokens_delta"
"""The key suffix of a trained embedding's rows (LoRA's ``trainable_token_indices``)."""


def token_indices(indices: Any, module: str, input_embedding: bool) -> list[int] | None:
    """The token ids whose rows ``module``'s ``trainable_tokens_delta`` holds, as PEFT reads
    ``trainable_token_indices``: a list is for the input embedding, a dict maps layer names
    (matched on the dotted suffix) to lists. None when the config names none for ``module``."""
    if isinstance(indices, list):
        return indices if input_embedding else None
    if isinstance(indices, dict):
        for name, value in indices.items():
            if module == name or module.endswith("." + name):
                return value if isinstance(value, list) else None
    return None


def parameter_targets(module: str, target_parameters: Any) -> list[str]:
    """The in-memory parameter names that ``target_parameters`` selects on ``module``.

    PEFT's ``lora.ParamWrapper`` nests when one module has several targeted parameters (the
    saved keys gain ``.base_layer`` per level), and matches ``module.param`` on its dotted
    suffix; ``module`` is read with those levels stripped.
    """
    if not isinstance(target_parameters, list):
        return []
    owner = re.sub(r"(\.base_layer)+$", "", module)
    found = []
    for key in target_parameters:
        if not isinstance(key, str):
            continue
        target_module, _, param = key.rpartition(".")
        if owner == target_module or owner.endswith("." + target_module):
            found.append(f"{owner}.{param}")
    return found


LORA_VARIANT_STATE: dict[str, tuple[str, ...]] = {
    # config key -> the per-module tensors the variant saves beside lora_A / lora_B
    "kasa_config": ("lora_diag",),
    "velora_config": ("lora_velora_embed",),
    "monteclora_config": (
        "lora_monteclora_sampler.std_prior",
        "lora_monteclora_sampler.expert_weights_prior",
        "lora_monteclora_sampler.gaussian_var_prior",
        "lora_monteclora_sampler.expert_weights",
    ),
}
"""LoRA variants (peft >= 0.21) enabled by a config sub-object, and what they save per module.
KaSA's ``lora_diag`` scales the rank components; VeLoRA's compressed-activation buffer and
MonteCLoRA's sampler only act while training (PEFT merges and evaluates both as plain LoRA)."""

LORA_FROZEN_STATE = (
    "lora_velora_embed",
    "lora_monteclora_sampler.gaussian_var_prior",
    "lora_monteclora_sampler.expert_weights",
)
"""Saved buffers, not parameters: PEFT's trainable count leaves them out."""

LORA_VARIANT_NAMES = {
    "kasa_config": "kasa",
    "velora_config": "velora",
    "monteclora_config": "monteclora",
    "use_bdlora": "bdlora",
}


def lora_variant(config: dict[str, Any]) -> str | None:
    """The card's variant for a LoRA config's sub-object variants (KaSA, VeLoRA, MonteCLoRA,
    BD-LoRA), None when it uses none of them."""
    for key, name in LORA_VARIANT_NAMES.items():
        if config.get(key):
            return name
    return None


def block_diagonal_factor(module: str, bdlora: Any) -> str | None:
    """``"A"`` or ``"B"`` when BD-LoRA stores that factor of ``module`` block-diagonally (as
    ``(rows, cols / nblocks)``: PEFT's ``BlockDiagonalLinear``), else None. PEFT's rule: a
    pattern of ``target_modules_bd_a`` / ``_bd_b`` that is a substring of the module's name."""
    if not isinstance(bdlora, dict):
        return None
    for factor, key in (("A", "target_modules_bd_a"), ("B", "target_modules_bd_b")):
        patterns = bdlora.get(key) or []
        if any(isinstance(p, str) and p in module for p in patterns):
            return factor
    return None


def layer_index(module: str) -> int | None:
    """The decoder layer a module name sits in: its first all-digit part
    (``model.layers.3.self_attn.q_proj`` -> 3, ``transformer.h.0.attn.c_attn`` -> 0; an MoE
    expert's number comes later, ``model.layers.1.mlp.experts.5.w1`` -> 1), or None for a
    module outside the layers (``lm_head``, ``model.embed_tokens``)."""
    for part in module.split("."):
        if part.isascii() and part.isdigit():
            return int(part)
    return None
