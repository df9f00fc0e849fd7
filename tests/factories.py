"""Tiny real models and real PEFT adapters for tests (built from configs, no downloads).

Plain, seeded functions (no pytest fixtures): ``make_base`` saves a tiny Llama, ``METHODS``
builds a PEFT config for every method the hub supports, ``make_adapter`` saves a real adapter
with PEFT's ``save_pretrained`` whose weights actually change the model's outputs, and
``peft_logits`` runs base + adapter the way users load it.
"""

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


def make_base(out_dir: Path, seed: int = 0, **config_overrides: Any) -> Path:
    """Save a randomly initialised tiny ``LlamaForCausalLM`` (safetensors) to ``out_dir``.

    ``config_overrides`` replace or extend ``TINY_LLAMA`` (e.g. ``tie_word_embeddings=True``).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, **config_overrides}))
    model.save_pretrained(out_dir)
    return Path(out_dir)


def load_base(path: Path) -> Any:
    """The base model saved at ``path``, in fp32 and eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()


def _config(class_name: str, **kwargs: Any) -> Callable[[str | None], Any]:
    """A factory ``base_model_name_or_path -> peft.<class_name>(task_type="CAUSAL_LM", ...)``."""

    def build(base_model_name_or_path: str | None = None) -> Any:
        import peft

        return getattr(peft, class_name)(
            task_type="CAUSAL_LM", base_model_name_or_path=base_model_name_or_path, **kwargs
        )

    return build


_ATTENTION = ["q_proj", "v_proj"]

METHODS: dict[str, Callable[[str | None], Any]] = {
    "lora": _config("LoraConfig", r=8, lora_alpha=16, target_modules=_ATTENTION),
    "dora": _config("LoraConfig", r=4, lora_alpha=8, use_dora=True, target_modules=_ATTENTION),
    "rslora": _config(
        "LoraConfig",
        r=8,
        lora_alpha=16,
        use_rslora=True,
        rank_pattern={"q_proj": 4},
        alpha_pattern={"v_proj": 32},
        target_modules=[*_ATTENTION, "down_proj"],
        modules_to_save=["lm_head"],
    ),
    "adalora": _config(
        "AdaLoraConfig", init_r=6, target_r=2, total_step=10, target_modules=_ATTENTION
    ),
    "ia3": _config(
        "IA3Config",
        target_modules=["k_proj", "v_proj", "down_proj"],
        feedforward_modules=["down_proj"],
    ),
    "loha": _config("LoHaConfig", r=4, alpha=8, target_modules=_ATTENTION),
    "lokr": _config("LoKrConfig", r=4, alpha=8, target_modules=_ATTENTION),
    "oft": _config("OFTConfig", r=0, oft_block_size=8, target_modules=_ATTENTION),
    "boft": _config("BOFTConfig", boft_block_size=8, target_modules=_ATTENTION),
    "vera": _config("VeraConfig", r=8, target_modules=_ATTENTION),
    "prompt_tuning": _config("PromptTuningConfig", num_virtual_tokens=5),
    "prefix_tuning": _config("PrefixTuningConfig", num_virtual_tokens=5),
    "p_tuning": _config("PromptEncoderConfig", num_virtual_tokens=5, encoder_hidden_size=32),
}
"""Every PEFT method the hub supports: name -> (base_model_name_or_path -> PEFT config)."""


def make_adapter(
    method: str, out_dir: Path, base_dir: Path, seed: int = 1, **config_overrides: Any
) -> Path:
    """Save a real ``method`` adapter for the base at ``base_dir`` with PEFT's save_pretrained.

    Deterministic: the same arguments give the same bytes. Every trainable parameter gets
    seeded Gaussian noise added (std 0.1; 0.02 for the
    rotation parameters of OFT/BOFT, which stay near the identity), a stand-in for training:
    fresh LoRA B matrices are zero, so an untouched adapter would not change the outputs.
    Noise is added rather than written over the init so that values with a meaning at init
    (DoRA's magnitudes = the weight norms, VeRA's lambda_d) stay sane.
    """
    import torch
    from peft import get_peft_model

    torch.manual_seed(seed)  # PEFT's own init (kaiming A, random prompts) draws from it
    config = METHODS[method](str(base_dir))
    for key, value in config_overrides.items():
        setattr(config, key, value)
    model = load_base(base_dir)
    # PEFT records the model's name_or_path as base_model_name_or_path in adapter_config.json.
    model.name_or_path = model.config._name_or_path = str(base_dir)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if param.requires_grad:
                std = 0.02 if ("oft_" in name or "boft_" in name) else 0.1
                param.add_(std * torch.randn(param.shape, generator=generator))
    peft_model.save_pretrained(out_dir)
    return Path(out_dir)


def make_pruned_adalora(out_dir: Path, base_dir: Path, seed: int = 1, steps: int = 6) -> Path:
    """Save an AdaLoRA adapter that went through real rank allocation (``update_and_allocate``).

    A few SGD steps on random tokens with AdaLoRA's schedule squeezed into ``steps`` leave a
    ``rank_pattern`` in the config and tensors cut down to the kept triplets, exactly as a
    real training run saves them.
    """
    import torch
    from peft import AdaLoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = load_base(base_dir)
    model.name_or_path = model.config._name_or_path = str(base_dir)
    config = AdaLoraConfig(
        task_type="CAUSAL_LM",
        init_r=6,
        target_r=2,
        tinit=1,
        tfinal=2,
        deltaT=1,
        total_step=steps,
        target_modules=_ATTENTION,
    )
    peft_model = get_peft_model(model, config)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    ids = torch.randint(0, TINY_LLAMA["vocab_size"], (2, 8))
    peft_model.train()
    for step in range(steps):
        peft_model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        peft_model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    with torch.no_grad():  # a few steps barely move E and B: make the kept triplets count
        for name, param in peft_model.named_parameters():
            if ".lora_E." in name:
                param.add_(0.1 * torch.randn(param.shape) * (param != 0))  # pruned stay zero
            elif ".lora_A." in name or ".lora_B." in name:
                param.add_(0.1 * torch.randn(param.shape))
    peft_model.save_pretrained(out_dir)
    return Path(out_dir)


def peft_logits(base_dir: Path, adapter_dir: Path, input_ids: Any) -> Any:
    """Logits of ``base + adapter`` loaded the way users load it: PeftModel.from_pretrained."""
    import torch
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(base_dir), str(adapter_dir)).eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits
