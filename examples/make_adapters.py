"""Build a tiny Llama base model and four real PEFT adapters for the demo.

Usage: python examples/make_adapters.py OUT_DIR
Writes OUT_DIR/base (a transformers model folder) and OUT_DIR/adapters/{sql-lora,
code-lora,summarize-dora,chat-ia3}, each saved by PEFT's own save_pretrained.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from peft import IA3Config, LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def main(out: Path) -> None:
    torch.manual_seed(0)
    base_dir = out / "base"
    LlamaForCausalLM(LlamaConfig(**TINY)).save_pretrained(base_dir)
    configs = {
        "sql-lora": LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
        "code-lora": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"]),
        "summarize-dora": LoraConfig(
            r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "k_proj", "v_proj"]
        ),
        "chat-ia3": IA3Config(
            target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]
        ),
    }
    for seed, (name, config) in enumerate(configs.items(), start=1):
        config.task_type = "CAUSAL_LM"
        model = LlamaForCausalLM.from_pretrained(base_dir)
        peft_model = get_peft_model(model, config)
        # Stand-in for training: give the adapter weights that change the model's outputs.
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in peft_model.parameters():
                if param.requires_grad:
                    param.add_(0.05 * torch.randn(param.shape, generator=generator))
        peft_model.save_pretrained(out / "adapters" / name)
        print(f"built {out / 'adapters' / name}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
