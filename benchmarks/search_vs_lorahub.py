"""Time per search candidate: hub's hooks vs LoraHub's method (PEFT re-merge + forward).

A Llama-shaped model (hidden 1024, 8 layers, random weights), two rank-16 LoRAs on q, k, v, o,
gate, up, down saved by PEFT, a batch of 8 sequences of 64 tokens. Per candidate (new weights):
  * LoraHub's way, with PEFT: `add_weighted_adapter(combination_type="cat")` with the weights,
    `set_adapter`, `merge_adapter` (rewrite the base weights), forward, `unmerge_adapter`,
    `delete_adapter`;
  * hub: `operators.merge_modules` (the exact `cat` merge), `CandidateModel.set` (hooks add
    `x A^T B^T`; base weights untouched), forward.
Both are checked to give the same logits (max abs difference printed).

Usage: python benchmarks/search_vs_lorahub.py [--candidates 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._util import table
from compose.adapter_io import load_adapter
from compose.operators import merge_modules
from compose.search import CandidateModel

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _base():  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=8,
        vocab_size=2000,
    )
    return LlamaForCausalLM(config).eval()


def _adapters(root: Path) -> list[Path]:
    from peft import LoraConfig, get_peft_model

    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = get_peft_model(_base(), LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
        model.save_pretrained(root / f"a{seed}")
        out.append(root / f"a{seed}")
    return out


@torch.no_grad()
def main() -> None:
    from peft import PeftModel

    parser = argparse.ArgumentParser()
    parser.add_argument("--candidates", type=int, default=10)
    args = parser.parse_args()
    ids = torch.randint(0, 2000, (8, 64), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    candidates = [(torch.rand(2, generator=g) * 3 - 1.5).tolist() for _ in range(args.candidates)]
    with tempfile.TemporaryDirectory() as tmp:
        folders = _adapters(Path(tmp))
        peft = PeftModel.from_pretrained(_base(), str(folders[0]), adapter_name="a")
        peft.load_adapter(str(folders[1]), adapter_name="b")
        start = time.perf_counter()
        peft_logits = []
        for w in candidates:
            peft.add_weighted_adapter(["a", "b"], w, "cand", combination_type="cat")
            peft.set_adapter("cand")
            peft.merge_adapter()
            peft_logits.append(peft(input_ids=ids).logits)
            peft.unmerge_adapter()
            peft.delete_adapter("cand")
        t_peft = (time.perf_counter() - start) / len(candidates)
        loaded = [load_adapter(f, f.name, "lora", "cat") for f in folders]
        inputs = [SimpleNamespace(card=SimpleNamespace(rank=16)) for _ in folders]
        base = _base()
        ours_logits = []
        with CandidateModel(base, sorted(loaded[0].modules)) as candidate:
            start = time.perf_counter()
            for w in candidates:
                merged, _ = merge_modules(loaded, inputs, "cat", {"weights": w})  # type: ignore[arg-type]
                candidate.set(merged)
                ours_logits.append(candidate.model(input_ids=ids).logits)
            t_ours = (time.perf_counter() - start) / len(candidates)
    diff = max(float((a - b).abs().max()) for a, b in zip(peft_logits, ours_logits, strict=True))
    print(
        f"cpu ({torch.get_num_threads()} threads), hidden 1024 x 8 layers, 2 rank-16 LoRAs,"
        f" batch 8 x 64 tokens, {len(candidates)} candidates; max |logit diff| {diff:.1e}"
    )
    print(table(["per candidate", "time", "speed-up"], [
        ["LoraHub's way (PEFT add_weighted_adapter + merge + forward)", f"{t_peft * 1000:.0f} ms",
         "1x"],
        ["hub (exact cat merge + hooks + forward)", f"{t_ours * 1000:.0f} ms",
         f"{t_peft / t_ours:.1f}x"],
    ]))  # fmt: skip


if __name__ == "__main__":
    main()
