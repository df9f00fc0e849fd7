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


def train_lora(
    base, out, steps=40, seed=0, texts=None, *, keep=None, targets=None, rank=4, lr=1e-2
):
    """Train a LoRA (rank ``rank``) for a few seconds on ``texts`` (default TRAIN) and save it
    with PEFT. With ``keep`` (texts), a KL term holds the base's predictions on those texts, so
    the adapter leaves another task alone (adapters that do not interfere)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            task_type="CAUSAL_LM",
            r=rank,
            lora_alpha=2 * rank,
            target_modules=targets or ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
        ),
    )
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr)
    texts = TRAIN if texts is None else texts
    batch = tok(texts, return_tensors="pt", padding=True) if tok.pad_token else None
    if batch is None:
        tok.pad_token = tok.eos_token
        batch = tok(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    if keep is not None:
        other = tok(keep, return_tensors="pt", padding=True)
        mask = other["attention_mask"].bool()
        with torch.no_grad(), peft_model.disable_adapter():
            reference = torch.log_softmax(peft_model(**other).logits, -1)[mask]
    peft_model.train()
    for _ in range(steps):
        loss = peft_model(**batch, labels=labels).loss
        if keep is not None:
            logp = torch.log_softmax(peft_model(**other).logits, -1)[mask]
            loss = loss + (reference.exp() * (reference - logp)).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    peft_model.save_pretrained(out)
    return out
