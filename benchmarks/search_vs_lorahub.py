"""Time per search candidate: hub's hooks vs LoraHub's method (PEFT re-merge + forward).

A Llama-shaped model (hidden 1024, 8 layers, random weights), two rank-16 LoRAs on q, k, v, o,
gate, up, down saved by PEFT, batches of 5 (LoraHub's few examples), 8 and 32 rows of 64
tokens. Per candidate (new weights):
  * LoraHub's way, with PEFT: `add_weighted_adapter(combination_type="cat")` with the weights,
    `set_adapter`, `merge_adapter` (rewrite the base weights), forward, `unmerge_adapter`,
    `delete_adapter`;
  * hub: what `hub compose search` does per candidate of the exact weighted sum: the inputs'
    factors were stacked on the device once (`CandidateModel.stack`); `set_weights` sets each
    input's weight on its rank columns (hooks add `((x A^T) * s) B^T`, the delta of the exact
    `cat` merge; base weights untouched), forward.
Both are checked to give the same logits (max abs difference printed). The two sides alternate
per candidate; the table gives medians.

Usage: python benchmarks/search_vs_lorahub.py [--candidates 10] [--rows 5,8,32] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._util import median, table
from compose.adapter_io import load_adapter
from compose.layer_groups import ModuleWeights
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


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peft_candidate(peft, w, ids):  # type: ignore[no-untyped-def]
    peft.add_weighted_adapter(["a", "b"], w, "cand", combination_type="cat")
    peft.set_adapter("cand")
    peft.merge_adapter()
    logits = peft(input_ids=ids).logits
    peft.unmerge_adapter()
    peft.delete_adapter("cand")
    return logits


def _hub_candidate(candidate, w, ids):  # type: ignore[no-untyped-def]
    candidate.set_weights(ModuleWeights({"weights": w}))
    return candidate.model(input_ids=ids).logits


@torch.no_grad()
def main() -> None:
    from peft import PeftModel

    parser = argparse.ArgumentParser()
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument(
        "--rows", default="5,8,32", help="comma-separated numbers of 64-token example rows"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = args.device
    g = torch.Generator().manual_seed(1)
    candidates = [(torch.rand(2, generator=g) * 3 - 1.5).tolist() for _ in range(args.candidates)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = _adapters(Path(tmp))
        peft = PeftModel.from_pretrained(_base(), str(folders[0]), adapter_name="a")
        peft.load_adapter(str(folders[1]), adapter_name="b")
        peft.to(device)
        loaded = [load_adapter(f, f.name, "lora", "cat") for f in folders]
        with CandidateModel(_base().to(device), sorted(loaded[0].modules)) as candidate:
            candidate.stack(loaded)  # once per search, like PEFT's adapters loaded above
            for rows in (int(r) for r in args.rows.split(",")):
                ids = torch.randint(0, 2000, (rows, 64), generator=torch.Generator().manual_seed(0))
                ids = ids.to(device)
                _peft_candidate(peft, candidates[0], ids)  # warm-up, both sides
                _hub_candidate(candidate, candidates[0], ids)
                t_peft, t_ours, diff = [], [], 0.0
                for w in candidates:  # alternated, so both sides see the same machine
                    _sync(device)
                    start = time.perf_counter()
                    theirs = _peft_candidate(peft, w, ids)
                    _sync(device)
                    t_peft.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    ours = _hub_candidate(candidate, w, ids)
                    _sync(device)
                    t_ours.append(time.perf_counter() - start)
                    diff = max(diff, float((theirs - ours).abs().max()))
                results.append((rows, median(t_peft), median(t_ours), diff))
    where = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(
        f"{where} ({torch.get_num_threads()} threads), hidden 1024 x 8 layers, 2 rank-16 LoRAs,"
        f" 64-token rows, median of {len(candidates)} candidates after a warm-up"
    )
    print(table(
        ["rows", "LoraHub's way (PEFT add_weighted_adapter + merge + forward)",
         "hub (reweighted stacked inputs + hooks + forward)", "speed-up", "max |logit diff|"],
        [[rows, f"{tp * 1000:.0f} ms", f"{to * 1000:.0f} ms", f"{tp / to:.1f}x", f"{d:.1e}"]
         for rows, tp, to, d in results],
    ))  # fmt: skip


if __name__ == "__main__":
    main()
