"""LoRA adapters actually trained (for seconds) on a synthetic task, for the evaluation and
comparison tests."""

from __future__ import annotations

import torch

# A synthetic "task": sentences of the tokenizer's own vocabulary in one fixed order.
TRAIN = [
    "the quick brown fox jumps over the lazy dog",
    "a merged adapter ships to llama cpp",
    "vllm serves many loras on one base model",
    "with tokens bytes and merges",
] * 4
HELD_OUT = [
    "the quick brown fox jumps over",
    "a merged adapter ships to llama",
    "vllm serves many loras on one base",
    "the lazy dog while a merged adapter",
    "many loras on one base model with tokens",
    "bytes and merges the quick brown fox",
]


def train_lora(base, out, steps=40, seed=0, texts=None):
    """Train a rank-4 LoRA for a few seconds on ``texts`` (default TRAIN), save it with PEFT."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            task_type="CAUSAL_LM",
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
        ),
    )
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], 1e-2)
    texts = TRAIN if texts is None else texts
    batch = tok(texts, return_tensors="pt", padding=True) if tok.pad_token else None
    if batch is None:
        tok.pad_token = tok.eos_token
        batch = tok(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    peft_model.train()
    for _ in range(steps):
        loss = peft_model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    peft_model.save_pretrained(out)
    return out
