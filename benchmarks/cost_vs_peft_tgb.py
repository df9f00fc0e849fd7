"""`hub eval --cost` vs PEFT's text_generation_benchmark procedure: how reproducible each
estimate of an adapter's inference overhead is, side by side.

One random Llama-architecture base (a `--config` of `benchmarks/eval_vs_lm_eval.py`: `tiny`
for a CPU, `1b` for a GPU), one LoRA saved by PEFT on every linear layer (r 16), one prompt of
`--length` synthetic tokens, batch 1, `--new-tokens` generated greedily (exactly that many).
Each repeat runs every procedure in fresh processes, as each is run by its users:

  * PEFT's procedure (method_comparison/text_generation_benchmark, written here after its
    README and run.py, not copied): the base in one process (its `run_base.py`), the adapter
    in another (`run.py`); each times `--runs` whole `generate` calls with `perf_counter`, no
    warm-up, and keeps their mean; the overhead is `mean(adapter) / mean(base) - 1`.
  * hub: `hub.eval_cost.measure_cost`, what `hub eval --cost` runs: base, unmerged (PEFT's
    `from_pretrained`) and merged (`merge_and_unload`) on the same loaded weights in one
    process, warm-up runs, then `--runs` timed ones (CUDA events on a GPU), prefill and decode
    apart; the overhead is the ratio of medians - 1.

The table gives, per estimate, its median over the repeats and its range (max - min, in
percentage points): what two runs of the same measurement can disagree by. The last column is
that range against PEFT's. Also: each procedure's wall time per repeat (processes included).

Usage: python benchmarks/cost_vs_peft_tgb.py [--config tiny|small|1b] [--repeats 5]
       [--runs 10] [--length 64] [--new-tokens 20] [--device auto] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from benchmarks._util import table

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(root: Path, config: str) -> tuple[Path, Path]:
    """The base folder (with its tokenizer) and a LoRA on every linear layer."""
    import torch
    from peft import LoraConfig, get_peft_model

    from benchmarks.eval_vs_lm_eval import random_base

    base, model = random_base(root, config, max_positions=4096)
    peft_model = get_peft_model(
        model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules=TARGETS)
    )
    with torch.no_grad():  # B = 0 at init: give the adapter a real delta
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(0.02 * torch.randn_like(param))
    adapter = root / "lora"
    peft_model.save_pretrained(adapter)
    return base, adapter


def _prompt(tokenizer: Any, vocab: int, length: int, device: Any) -> Any:
    from compose.cost import synthetic_prompts

    return synthetic_prompts(tokenizer, vocab, 1, length, 0).to(device)


def worker_peft(args: argparse.Namespace) -> dict[str, Any]:
    """One process of PEFT's procedure: the base alone, or the base with the adapter."""
    import torch
    from peft import PeftModel

    from compose.evaluate import device_for, pad_token
    from hub.evals import _tokenizer, load_base_model

    device = device_for(args.device)
    tokenizer = _tokenizer(Path(args.base))
    model = load_base_model(Path(args.base), args.dtype, device)
    if args.worker == "peft-adapter":
        model = PeftModel.from_pretrained(model, args.adapter).eval()
    ids = _prompt(tokenizer, int(model.config.vocab_size), args.length, device)
    times = []
    with torch.no_grad():
        for _ in range(args.runs):
            start = time.perf_counter()
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=False,
                pad_token_id=pad_token(tokenizer),
            )
            times.append(time.perf_counter() - start)
            assert out.shape[1] - ids.shape[1] == args.new_tokens
    return {"mean_s": statistics.fmean(times)}


def worker_hub(args: argparse.Namespace) -> dict[str, Any]:
    """One process of what `hub eval --cost` runs for this adapter."""
    from compose.cost import CostOptions
    from compose.eval_data import read_eval_data
    from compose.evaluate import device_for
    from hub.eval_cost import measure_cost
    from hub.evals import _tokenizer
    from hub.inspect import inspect_adapter

    device = device_for(args.device)
    card = inspect_adapter(args.adapter)
    data = Path(args.data)
    options = CostOptions(
        batch_sizes=(1,), prompt_lengths=(args.length,), new_tokens=args.new_tokens,
        warmup=3, runs=args.runs,
    )  # fmt: skip
    cost = measure_cost(
        card,  # an InspectedAdapter: it has every field measure_cost reads
        Path(args.adapter),
        Path(args.base),
        _tokenizer(Path(args.base)),
        read_eval_data(data),
        dtype=args.dtype,
        device=device,
        options=options,
    )
    out: dict[str, Any] = {}
    for mode in ("unmerged", "merged"):
        overhead = cost["modes"][mode]["overhead"]
        config = cost["modes"][mode]["configs"][0]
        out[mode] = {
            "prefill": overhead["prefill"],
            "decode": overhead["decode"],
            "prefill_spread": config["prefill_ms"]["spread"],
            "decode_spread": config["decode_ms_per_step"]["spread"],
        }
    out["merge_max_logit_diff"] = cost["merge"]["max_logit_diff"]
    return out


def _spawn(args: argparse.Namespace, worker: str, base: Path, adapter: Path, data: Path) -> Any:
    cmd = [
        sys.executable, __file__, "--worker", worker, "--base", str(base),
        "--adapter", str(adapter), "--data", str(data), "--device", args.device,
        "--dtype", args.dtype, "--runs", str(args.runs), "--length", str(args.length),
        "--new-tokens", str(args.new_tokens),
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    print(f"  {worker}: {seconds:.1f} s", file=sys.stderr, flush=True)
    [line] = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line[len("RESULT ") :]), seconds


def _pct(values: list[float]) -> tuple[str, str, float, str]:
    """Median and range of overhead estimates, in percent; the range in points; each value."""
    spread = (max(values) - min(values)) * 100
    each = " / ".join(f"{v * 100:+.0f}" for v in values)
    return f"{statistics.median(values) * 100:+.1f}%", f"{spread:.1f} pt", spread, each


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--worker", choices=["peft-base", "peft-adapter", "hub"])
    parser.add_argument("--base")
    parser.add_argument("--adapter")
    parser.add_argument("--data")
    args = parser.parse_args()
    if args.worker:
        result = worker_hub(args) if args.worker == "hub" else worker_peft(args)
        print("RESULT " + json.dumps(result))
        return 0
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    peft_overheads: list[float] = []
    hub_runs: list[dict[str, Any]] = []
    seconds: dict[str, list[float]] = {"peft": [], "hub": []}
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp:
        base, adapter = build(Path(tmp), args.config)
        data = Path(tmp) / "probe.jsonl"
        data.write_text("".join(json.dumps({"text": f"row {i} of the probe"}) + "\n"
                                for i in range(8)))  # fmt: skip
        for _ in range(args.repeats):
            base_run, t_base = _spawn(args, "peft-base", base, adapter, data)
            adapter_run, t_adapter = _spawn(args, "peft-adapter", base, adapter, data)
            hub_run, t_hub = _spawn(args, "hub", base, adapter, data)
            peft_overheads.append(adapter_run["mean_s"] / base_run["mean_s"] - 1)
            hub_runs.append(hub_run)
            seconds["peft"].append(t_base + t_adapter)
            seconds["hub"].append(t_hub)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(
        f"{args.config} config, LoRA r16 on all 7 linear layers, batch 1, prompt {args.length}"
        f" tokens, {args.new_tokens} new, {args.dtype}, {name}, {args.runs} timed runs per"
        f" estimate, {args.repeats} repeats in fresh processes"
    )
    peft_med, peft_range, peft_spread, peft_each = _pct(peft_overheads)
    rows = [["PEFT procedure: whole generate, unmerged", peft_med, peft_range, "1.00x", peft_each]]
    for mode in ("unmerged", "merged"):
        for part in ("prefill", "decode"):
            med, rng, spread, each = _pct([r[mode][part] for r in hub_runs])
            ratio = f"{spread / peft_spread:.2f}x" if peft_spread > 0 else "-"
            rows.append([f"hub: {part}, {mode}", med, rng, ratio, each])
    headers = ["overhead estimate", "median", "range over repeats", "range vs PEFT's", "each (%)"]
    print(table(headers, rows))
    within = max(r[m][f"{p}_spread"] for r in hub_runs for m in ("unmerged", "merged")
                 for p in ("prefill", "decode"))  # fmt: skip
    print(f"hub's run-to-run spread within one estimate (IQR / median), at most: {within:.1%}")
    print(
        f"wall time per repeat: PEFT procedure {statistics.median(seconds['peft']):.1f} s (two"
        f" processes), hub {statistics.median(seconds['hub']):.1f} s (one process, three modes)"
    )
    diffs = [r["merge_max_logit_diff"] for r in hub_runs]
    print(f"merged vs unmerged, max logit difference: {max(diffs):.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
