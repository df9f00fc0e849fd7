"""`ties` merge factored to rank 16 vs PEFT's `add_weighted_adapter(combination_type="ties_svd")`.

Two rank-16 LoRAs (random factors, alpha = r) on one decoder layer's q, k, v, o, gate, up and
down projections at Llama-7B (hidden 4096, MLP 11008) or Llama-70B (8192 / 28672, 8 KV heads)
shapes, TIES at density 0.2, weights 1 / 1, result rank 16. Both start from the same factors
in one process:
  * PEFT: `add_weighted_adapter` on a PeftModel of those Linear layers (dense delta, TIES, full
    SVD per module);
  * hub, what `hub compose ties --rank 16` runs per module (`compose.operators`):
    `compose.blockwise.ties` on the factors (the inputs' dense deltas never formed), then
    `compose.merge.factor` (checked randomized range finder, exact fallback, its first sample
    the inputs' B factors);
  * hub with the dense TIES instead: per input the fp64 product `B @ A` rounded to fp32,
    `compose.merge.ties`, the same factor (the path before `compose.blockwise`; the two TIES
    results are checked to be equal).
Accuracy: relative Frobenius error of each rank-16 result against the exact (fp64) truncated
SVD of that side's own TIES delta, on the layer's largest module (`--no-accuracy` skips it: two
full fp64 SVDs). hub's times are medians of `--rounds` rounds (the two hub paths alternate in
each) after one warm-up round; PEFT's, dominated by its SVDs, is one run. A 70B model has 80
such layers: multiply the per-layer times by 80.

Usage: python benchmarks/ties_vs_peft.py [--shapes 7b|70b] [--device cuda] [--modules q_proj,...]
           [--threads N] [--rounds N] [--no-peft] [--no-accuracy]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._util import table
from compose import blockwise, merge

SHAPES = {  # name: (in_features, out_features)
    "7b": {"q_proj": (4096, 4096), "k_proj": (4096, 4096), "v_proj": (4096, 4096),
           "o_proj": (4096, 4096), "gate_proj": (4096, 11008), "up_proj": (4096, 11008),
           "down_proj": (11008, 4096)},
    "70b": {"q_proj": (8192, 8192), "k_proj": (8192, 1024), "v_proj": (8192, 1024),
            "o_proj": (8192, 8192), "gate_proj": (8192, 28672), "up_proj": (8192, 28672),
            "down_proj": (28672, 8192)},
}  # fmt: skip
RANK, DENSITY, WEIGHTS = 16, 0.2, (1.0, 1.0)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peft_model(shapes: dict[str, tuple[int, int]], device: str):  # type: ignore[no-untyped-def]
    from peft import LoraConfig, get_peft_model

    layer = nn.Module()
    for name, (fan_in, fan_out) in shapes.items():
        setattr(layer, name, nn.Linear(fan_in, fan_out, bias=False, device="meta"))
    layer = layer.to_empty(device=device)
    config = dict(r=RANK, lora_alpha=RANK, target_modules=list(shapes))
    model = get_peft_model(layer, LoraConfig(**config), adapter_name="a")  # type: ignore[arg-type]
    model.add_adapter("b", LoraConfig(**config))  # type: ignore[arg-type]
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=g, device=device) * 0.02)
    return model


def factors(model, names):  # type: ignore[no-untyped-def]
    out = {}
    for name in names:
        module = getattr(model.base_model.model, name)
        out[name] = [
            merge.Factors(A=module.lora_A[a].weight.detach(), B=module.lora_B[a].weight.detach())
            for a in ("a", "b")
        ]
    return out


def ours(inputs, device: str, dense: bool = False):  # type: ignore[no-untyped-def]
    _sync(device)
    start = time.perf_counter()
    results = {}
    for name, fs in inputs.items():
        if dense:
            ties = merge.ties([blockwise.product(f) for f in fs], list(WEIGHTS), DENSITY)
        else:
            ties = blockwise.ties(fs, list(WEIGHTS), DENSITY, module=name)
        columns = torch.cat([f.B for f in fs], dim=1)  # the first sample, as compose's
        results[name] = merge.factor(ties, RANK, module=name, start=columns)
        del ties
    _sync(device)
    return results, time.perf_counter() - start


def peft_merge(model, device: str) -> float:  # type: ignore[no-untyped-def]
    _sync(device)
    start = time.perf_counter()
    model.add_weighted_adapter(
        ["a", "b"], list(WEIGHTS), "merged", combination_type="ties_svd", svd_rank=RANK,
        density=DENSITY,
    )  # fmt: skip
    _sync(device)
    return time.perf_counter() - start


def _truncated_error(delta: torch.Tensor, result: torch.Tensor) -> float:
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    exact = (u[:, :RANK] * s[:RANK]) @ vh[:RANK]
    return float((result.double() - exact).norm() / exact.norm())


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", choices=list(SHAPES), default="7b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modules", help="comma-separated subset of the layer's modules")
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: its own)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each hub path")
    parser.add_argument("--no-peft", action="store_true", help="time hub's two paths only")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the exact SVDs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = SHAPES[args.shapes]
    if args.modules:
        shapes = {n: shapes[n] for n in args.modules.split(",")}
    model = peft_model(shapes, args.device)
    inputs = factors(model, shapes)
    for name, fs in inputs.items():  # the two TIES paths give the same values
        same = torch.equal(
            blockwise.ties(fs, list(WEIGHTS), DENSITY),
            merge.ties([blockwise.product(f) for f in fs], list(WEIGHTS), DENSITY),
        )
        assert same, name
    ours(inputs, args.device)  # warm-up: kernels, cuBLAS plans and the allocator, per shape
    ours(inputs, args.device, dense=True)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for dense in (True, False):
            merged, seconds = ours(inputs, args.device, dense)
            times[dense].append(seconds)
    results = merged  # the blockwise round's
    t_ours, t_dense = (statistics.median(times[d]) for d in (False, True))
    t_peft = None if args.no_peft else peft_merge(model, args.device)
    methods = sorted({r.method for r in results.values()})
    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device: {where} ({torch.get_num_threads()} threads), {args.shapes} shapes,"
          f" modules {', '.join(shapes)}; hub: median of {args.rounds} rounds")  # fmt: skip
    base = t_peft if t_peft is not None else t_dense

    def speed(t: float) -> str:
        return f"{base / t:.1f}x"

    rows = [] if t_peft is None else [
        [f"PEFT add_weighted_adapter(ties_svd), {len(shapes)} modules", f"{t_peft:.2f} s", "1x"]
    ]  # fmt: skip
    rows += [
        [f"hub dense ties + factor ({'/'.join(methods)}), {len(shapes)} modules",
         f"{t_dense:.3f} s", speed(t_dense)],
        [f"hub blockwise ties + factor ({'/'.join(methods)}), {len(shapes)} modules",
         f"{t_ours:.3f} s", speed(t_ours)],
    ]  # fmt: skip
    print(table(["operation", "time", "speed-up"], rows))
    print("hub rounds (s): blockwise " + " ".join(f"{t:.3f}" for t in times[False])
          + "; dense " + " ".join(f"{t:.3f}" for t in times[True]))  # fmt: skip
    if args.no_accuracy or t_peft is None:
        return
    largest = max(shapes, key=lambda n: shapes[n][0] * shapes[n][1])
    fs = inputs[largest]
    ties_ours = blockwise.ties(fs, list(WEIGHTS), DENSITY)
    module = getattr(model.base_model.model, largest)
    peft_delta = module.get_delta_weight("merged")
    from peft.utils import merge_utils

    peft_ties = merge_utils.ties(
        [module.get_delta_weight(a) for a in ("a", "b")], torch.tensor(WEIGHTS, device=args.device),
        DENSITY,
    )  # fmt: skip
    ours_err = _truncated_error(ties_ours, results[largest].factors.delta())
    peft_err = _truncated_error(peft_ties, peft_delta)
    energy = results[largest].energy
    print(f"{largest}: relative error vs the exact truncated SVD: hub {ours_err:.1e},"
          f" PEFT {peft_err:.1e}; energy kept at rank {RANK}: {energy:.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
