"""Load a pulled adapter with PEFT and check it behaves exactly like the original folder.

Usage: python examples/load_pulled.py BASE_DIR ORIGINAL_ADAPTER_DIR PULLED_ADAPTER_DIR
"""

from __future__ import annotations

import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def logits(base_dir: str, adapter_dir: str) -> torch.Tensor:
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    model.eval()
    with torch.no_grad():
        return model(torch.arange(12).unsqueeze(0)).logits


def main(base_dir: str, original: str, pulled: str) -> None:
    expected, got = logits(base_dir, original), logits(base_dir, pulled)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        base_logits = base(torch.arange(12).unsqueeze(0)).logits
    if not torch.equal(expected, got):
        sys.exit("pulled adapter behaves differently from the original")
    shift = (got - base_logits).abs().max().item()
    print(
        f"PeftModel.from_pretrained({pulled!r}): logits identical to the original adapter "
        f"(max change vs. base model: {shift:.4f})"
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
