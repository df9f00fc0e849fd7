"""Tiny real models and real PEFT adapters for tests (built from configs, no downloads)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

TINY_LLAMA: dict[str, Any] = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def make_base(out_dir: Path, seed: int = 0, **overrides: Any) -> Path:
    """Save a randomly initialised tiny ``LlamaForCausalLM`` (safetensors) to ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, **overrides}))
    model.save_pretrained(out_dir)
    return Path(out_dir)


def load_base(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()


def _lora(**kw: Any) -> Any:
    from peft import LoraConfig

    return LoraConfig(**{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], **kw})


def _peft(name: str, **kw: Any) -> Callable[[], Any]:
    def build() -> Any:
        import peft

        return getattr(peft, name)(**kw)

    return build


METHODS: dict[str, Callable[[], Any]] = {
    "lora": lambda: _lora(),
    "dora": lambda: _lora(r=4, lora_alpha=8, use_dora=True),
    "rslora": lambda: _lora(
        use_rslora=True,
        rank_pattern={"q_proj": 4},
        alpha_pattern={"v_proj": 32},
        target_modules=["q_proj", "v_proj", "down_proj"],
        modules_to_save=["lm_head"],
    ),
    "adalora": _peft(
        "AdaLoraConfig", init_r=6, target_r=2, total_step=10, target_modules=["q_proj", "v_proj"]
    ),
    "ia3": _peft(
        "IA3Config",
        target_modules=["k_proj", "v_proj", "down_proj"],
        feedforward_modules=["down_proj"],
    ),
    "loha": _peft("LoHaConfig", r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
    "lokr": _peft("LoKrConfig", r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
    "oft": _peft("OFTConfig", r=0, oft_block_size=8, target_modules=["q_proj", "v_proj"]),
    "boft": _peft("BOFTConfig", boft_block_size=8, target_modules=["q_proj", "v_proj"]),
    "vera": _peft("VeraConfig", r=8, target_modules=["q_proj", "v_proj"]),
    "prompt_tuning": _peft("PromptTuningConfig", num_virtual_tokens=5),
    "prefix_tuning": _peft("PrefixTuningConfig", num_virtual_tokens=5),
    "p_tuning": _peft("PromptEncoderConfig", num_virtual_tokens=5, encoder_hidden_size=32),
}
"""Every PEFT method the hub supports, as a config factory (task type set by make_adapter)."""


def make_adapter(
    method: str, out_dir: Path, base_dir: Path, seed: int = 1, **overrides: Any
) -> Path:
    """Save a real ``method`` adapter for the base at ``base_dir`` with PEFT's save_pretrained.

    Trainable weights are perturbed with seeded noise (a stand-in for training: fresh LoRA B
    matrices are zero, so an untouched adapter would not change the model's outputs).
    """
    import torch
    from peft import get_peft_model

    config = METHODS[method]()
    config.task_type = "CAUSAL_LM"
    for key, value in overrides.items():
        setattr(config, key, value)
    model = load_base(base_dir)
    model.config.name_or_path = str(base_dir)
    model.name_or_path = str(base_dir)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if param.requires_grad:
                # Rotation-style methods (OFT/BOFT) stay near identity; others get visible deltas.
                std = 0.02 if ("oft_" in name or "boft_" in name) else 0.1
                param.add_(std * torch.randn(param.shape, generator=generator))
    peft_model.save_pretrained(out_dir)
    return Path(out_dir)


def peft_logits(base_dir: Path, adapter_dir: Path, input_ids: Any) -> Any:
    """Logits of ``base + adapter`` loaded the way users load it: PeftModel.from_pretrained."""
    import torch
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(base_dir), str(adapter_dir)).eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits
