"""Real adapters of the PEFT types the hub cards generically (see ``schemas.methods``).

``GENERIC_TYPES`` maps each such PEFT type to the config that builds it on the tiny Llama of
``tests.factories`` (defaults sized for 7B models do not fit a 64-wide model), and ``NEEDS``
names the module a type needs that the project does not depend on (its tests skip without).
``make_typed_adapter`` saves one with PEFT's own ``save_pretrained``, after seeded noise on
every trainable parameter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.factories import load_base

_QV = ["q_proj", "v_proj"]

GENERIC_TYPES: dict[str, dict[str, Any]] = {
    "adamss": {"r": 8, "num_subspaces": 2, "subspace_rank": 1, "target_modules": _QV},
    "adaption_prompt": {"adapter_len": 4, "adapter_layers": 1},
    "beft": {"target_modules": _QV},
    "c3a": {"block_size": 16, "target_modules": _QV},
    "cartridge": {"num_virtual_tokens": 4},
    "cpt": {"cpt_token_ids": [1, 2, 3], "cpt_mask": [1, 1, 1], "cpt_tokens_type_mask": [1, 2, 2]},
    "delora": {"target_modules": _QV},
    "deft": {"target_modules": _QV},
    "fourierft": {"n_frequency": 100, "target_modules": _QV},
    "frod": {"target_modules": _QV},
    "glora": {"target_modules": _QV},
    "gralora": {"target_modules": _QV},
    "hira": {"target_modules": _QV},
    "hra": {"target_modules": _QV},
    "lily": {"target_modules": _QV},
    "ln_tuning": {"target_modules": ["input_layernorm", "post_attention_layernorm"]},
    "miss": {"r": 8, "target_modules": _QV},
    "multitask_prompt_tuning": {"num_virtual_tokens": 4, "num_tasks": 2},
    "osf": {"target_modules": _QV},
    "peanut": {"target_modules": _QV},
    "poly": {"target_modules": _QV, "n_tasks": 2},
    "psoft": {"r": 8, "target_modules": _QV},
    "pvera": {"target_modules": _QV},
    "randlora": {"target_modules": _QV},
    "road": {"group_size": 16, "target_modules": _QV},
    "shadow": {"r": 4},  # whole decoder blocks (its default), not linear layers
    "shira": {"r": 4, "target_modules": _QV},
    "supertuning": {"target_modules": _QV},
    "tinylora": {"target_modules": _QV},
    "trainable_tokens": {"token_indices": [3, 7, 11], "target_modules": ["embed_tokens"]},
    "unilora": {"target_modules": _QV},
    "vblora": {"r": 4, "num_vectors": 32, "vector_length": 16, "target_modules": _QV},
    "waveft": {"n_frequency": 200, "target_modules": _QV},
}
"""PEFT type (lowercase) -> keyword arguments of its config class (task_type CAUSAL_LM)."""

NEEDS: dict[str, str] = {"adamss": "sklearn"}
"""PEFT type -> the module its config requires (PEFT's AdaMSS clusters with scikit-learn)."""

FORWARD_KWARGS: dict[str, dict[str, Any]] = {
    "poly": {"task_ids": [0]},
    "multitask_prompt_tuning": {"task_ids": [0]},
}
"""Extra forward arguments a type needs (Poly and multitask prompts route by task id)."""

SPECIAL_FORWARD = frozenset({"poly", "multitask_prompt_tuning", "xlora"})
"""Types the shared fidelity harness cannot run as plain rows: a forward pass that needs task
ids, X-LoRA (LoRAs in subfolders, no KV cache). ``tests/e2e/test_generic_types.py`` covers
them."""


def make_typed_adapter(peft_type: str, out_dir: Path, base_dir: Path, seed: int = 1) -> Path:
    """Save a real ``peft_type`` adapter for the base at ``base_dir`` (deterministic)."""
    import torch
    from peft import get_peft_model
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    torch.manual_seed(seed)
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type.upper()]
    config = config_class(
        task_type="CAUSAL_LM", base_model_name_or_path=str(base_dir), **GENERIC_TYPES[peft_type]
    )
    model = load_base(base_dir)
    model.name_or_path = model.config._name_or_path = str(base_dir)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in peft_model.named_parameters():
            if param.requires_grad and param.is_floating_point():
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    peft_model.save_pretrained(out_dir)
    return Path(out_dir)
