"""What an ``adapter_config.json`` says about merging, read without torch or peft.

One place for three facts that decide whether an adapter may be merged into weights (by
``hub export`` and by the ``compose`` operators) and that the card records:

- the config keys PEFT knows, per ``peft_type`` (``KNOWN_KEYS``, the fields of PEFT's config
  dataclasses; ``tests/compose/test_peft_config.py`` checks them against the installed peft).
  A key outside them comes from a newer PEFT: it is accepted and named on the card, but it
  blocks merging unless its value is "off" (null, false, 0, empty), the value PEFT writes for a
  feature that is not in use. A newer feature that is on may change the forward pass (aLoRA's
  ``alora_invocation_tokens`` did), and merging it as a plain LoRA would be silently wrong.
- activated LoRA (``alora_invocation_tokens``): applied only from the invocation sequence on,
  so no merged weight is equal to it (PEFT itself raises "aLoRA does not support merging").
- inits that change the base (PiSSA, OLoRA, CorDA, LoftQ), saved without conversion: PEFT
  re-runs the init on the base when it loads the folder and adds B A to that changed base,
  so adding B A to the original base is wrong.
"""

from __future__ import annotations

from typing import Any

PEFT_VERSION = "0.21.2"
"""The peft release ``KNOWN_KEYS`` was read from."""

_COMMON = (
    "auto_mapping base_model_name_or_path inference_mode peft_type peft_version revision task_type"
)
_LORA = (
    "alora_invocation_tokens alpha_pattern arrow_config bias corda_config ensure_weight_tying"
    " eva_config exclude_modules fan_in_fan_out init_lora_weights kasa_config layer_replication"
    " layers_pattern layers_to_transform loftq_config lora_alpha lora_bias lora_dropout"
    " lora_ga_config megatron_config megatron_core modules_to_save monteclora_config"
    " qalora_group_size r rank_pattern runtime_config target_modules target_parameters"
    " trainable_token_indices use_bdlora use_dora use_qalora use_rslora velora_config"
)
_PROMPT = "modules_to_save num_attention_heads num_layers num_transformer_submodules"
_PROMPT += " num_virtual_tokens token_dim"
_LYCORIS = (
    "alpha alpha_pattern exclude_modules init_weights layers_pattern layers_to_transform"
    " module_dropout modules_to_save r rank_dropout rank_pattern target_modules"
    " use_effective_conv2d"
)
_FIELDS: dict[str, str] = {
    "LORA": _LORA,
    "ADALORA": _LORA + " beta1 beta2 deltaT init_r orth_reg_weight target_r tfinal tinit"
    " total_step",
    "IA3": "exclude_modules fan_in_fan_out feedforward_modules init_ia3_weights"
    " modules_to_save target_modules",
    "LOHA": _LYCORIS,
    "LOKR": _LYCORIS + " decompose_both decompose_factor rank_dropout_scale",
    "OFT": "bias block_share coft eps exclude_modules fan_in_fan_out init_weights"
    " layers_pattern layers_to_transform module_dropout modules_to_save"
    " num_cayley_neumann_terms oft_block_size r target_modules use_cayley_neumann",
    "BOFT": "bias boft_block_num boft_block_size boft_dropout boft_n_butterfly_factor"
    " exclude_modules fan_in_fan_out init_weights layers_pattern layers_to_transform"
    " modules_to_save target_modules",
    "VERA": "bias d_initial fan_in_fan_out init_weights layers_pattern layers_to_transform"
    " modules_to_save projection_prng_key r save_projection target_modules vera_dropout",
    "PROMPT_TUNING": _PROMPT + " prompt_tuning_init prompt_tuning_init_text tokenizer_kwargs"
    " tokenizer_name_or_path",
    "PREFIX_TUNING": _PROMPT + " encoder_hidden_size init_weights prefix_projection",
    "P_TUNING": _PROMPT + " encoder_dropout encoder_hidden_size encoder_num_layers"
    " encoder_reparameterization_type",
}
KNOWN_KEYS: dict[str, frozenset[str]] = {
    peft_type: frozenset((_COMMON + " " + names).split()) for peft_type, names in _FIELDS.items()
}
"""``peft_type`` -> every key its config class has in PEFT ``PEFT_VERSION``."""

# init_lora_weights values after which PEFT changes the base weights, and what the base
# becomes when PEFT loads the folder.
_BASE_CHANGING_INITS = {
    "pissa": "the base minus its top-r singular components",
    "olora": "the base minus the first r components of its QR decomposition",
    "corda": "the base minus its context-oriented (CorDA) components",
    "loftq": "LoftQ's quantized approximation of the base",
}
_CONVERSION = (
    "save it with save_pretrained(..., path_initial_model_for_weight_conversion=INITIAL),"
    " INITIAL being the adapter saved before training, to get a plain LoRA of the original"
    " base, and push that"
)


def _off(value: Any) -> bool:
    """The value PEFT writes for a feature that is not in use."""
    return value is None or value is False or value == 0 or value in ("", [], {})


def unknown_keys(config: dict[str, Any]) -> list[str]:
    """Keys of ``config`` that PEFT ``PEFT_VERSION`` does not know for its ``peft_type``,
    sorted (empty for a type ``KNOWN_KEYS`` does not list)."""
    known = KNOWN_KEYS.get(str(config.get("peft_type", "")).upper())
    return [] if known is None else sorted(set(config) - known)


def base_changing_init(config: dict[str, Any]) -> str | None:
    """``init_lora_weights`` when it makes PEFT rebuild a changed base at load, else None.

    PEFT's converted form (``path_initial_model_for_weight_conversion``) is saved with
    ``init_lora_weights=True``, so it is never flagged.
    """
    init = config.get("init_lora_weights")
    if not isinstance(init, str):
        return None
    name = init.lower()
    return init if any(name.startswith(prefix) for prefix in _BASE_CHANGING_INITS) else None


def merge_refusal(config: dict[str, Any]) -> str | None:
    """Why this adapter must not be merged into weights, or None when nothing speaks against it.

    The reason names the config field and what to do; callers prefix the adapter's name.

    Example:
        >>> merge_refusal({"peft_type": "LORA", "alora_invocation_tokens": [5, 9]})[:46]
        'is an activated LoRA (aLoRA, alora_invocation'
    """
    tokens = config.get("alora_invocation_tokens")
    if tokens:
        return (
            f"is an activated LoRA (aLoRA, alora_invocation_tokens={tokens}): it applies only"
            " from its invocation tokens on, which neither merged weights nor plain LoRA files"
            " for vLLM or llama.cpp express (PEFT: 'aLoRA does not support merging'); serve it"
            " unmerged with PEFT"
        )
    init = base_changing_init(config)
    if init is not None:
        becomes = next(v for k, v in _BASE_CHANGING_INITS.items() if init.lower().startswith(k))
        fix = (
            "export onto that quantized base is not supported"
            if init.lower() == "loftq"
            else _CONVERSION
        )
        return (
            f"was saved with init_lora_weights={init!r} and not converted: PEFT loads it onto"
            f" {becomes}, not onto the original base, so applying it to the original base"
            f" (merged or as a LoRA file) would be wrong; {fix}"
        )
    on = {key: config[key] for key in unknown_keys(config) if not _off(config[key])}
    if on:
        fields = ", ".join(f"{key!r}={value!r}" for key, value in on.items())
        return (
            f"sets adapter_config.json field(s) {fields}, unknown to PEFT {PEFT_VERSION} (the"
            " version hub reads configs as): they may change the forward pass, so it is not"
            " merged; use a hub release that knows them"
        )
    return None
