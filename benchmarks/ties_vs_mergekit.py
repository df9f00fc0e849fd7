"""hub's `ties` from LoRA factors, factored to rank 16, vs mergekit's `ties` on full weights.

The same two rank-16 LoRAs per module (random factors, alpha = r) on one decoder layer's q, k,
v, o, gate, up and down projections at Llama-7B or Llama-70B shapes, TIES at density 0.2,
weights 1 / 1, on one device:
  * mergekit: its normal path, full weights. Each "fine-tuned model" is the base weight plus
    that LoRA's delta (built beforehand, untimed: mergekit would read them from checkpoints,
    and the reads and writes of its CLI are left out here, in its favour); timed is
    `mergekit.merge_methods.get("ties").merge_group` on [base, model 1, model 2]: the task
    vectors, magnitude sparsification (`argsort`), the sign consensus and the disjoint mean,
    giving the merged full weight.
  * hub: per module `B @ A` per input, `compose.merge.ties` (the dense TIES delta, timed on its
    own too) and `compose.merge.factor` (checked randomized range finder) to a rank-16 LoRA:
    what `hub compose ties --rank 16` computes.
Agreement, on the layer's largest module: hub's dense TIES delta against mergekit's merged
weight minus the base (relative Frobenius difference, entries that differ: `base + delta - base`
in fp32 is not exactly `delta`, which moves a few values across the trim threshold), and
whether the two are identical when mergekit is given a zero base (the deltas exactly).
Times are medians of three runs after a warm-up run, per layer (a 70B model has 80).

Usage: python benchmarks/ties_vs_mergekit.py [--shapes 7b|70b] [--device cuda] [--modules ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._util import table
from benchmarks.ties_vs_peft import DENSITY, RANK, SHAPES, WEIGHTS, _sync
from compose import merge

MERGEKIT_TIES = {
    "int8_mask": False,
    "normalize": True,
    "rescale": False,
    "lambda": 1.0,
    "weight": {1: WEIGHTS[0], 2: WEIGHTS[1]},
    "density": {1: DENSITY, 2: DENSITY},
}
"""mergekit's parameters for `ties` (its defaults), per input id 1 and 2 (0 is the base)."""


def _inputs(shapes: dict[str, tuple[int, int]], device: str) -> dict[str, list[merge.Factors]]:
    g = torch.Generator(device=device).manual_seed(0)
    out = {}
    for name, (fan_in, fan_out) in shapes.items():
        out[name] = [
            merge.Factors(
                A=torch.randn(RANK, fan_in, generator=g, device=device) * 0.02,
                B=torch.randn(fan_out, RANK, generator=g, device=device) * 0.02,
            )
            for _ in WEIGHTS
        ]
    return out


def _base(shape: tuple[int, int], device: str, seed: int) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    fan_in, fan_out = shape
    return torch.randn(fan_out, fan_in, generator=g, device=device) * 0.02


def hub_side(inputs, device: str, factor: bool):  # type: ignore[no-untyped-def]
    """hub's TIES per module (and the rank-16 factor); the dense delta freed after each."""
    total, results = 0.0, {}
    for name, fs in inputs.items():
        _sync(device)
        start = time.perf_counter()
        dense = merge.ties([f.B @ f.A for f in fs], list(WEIGHTS), DENSITY, module=name)
        results[name] = merge.factor(dense, RANK, module=name) if factor else None
        _sync(device)
        total += time.perf_counter() - start
        del dense
    return results, total


def mergekit_side(inputs, shapes, device: str) -> float:  # type: ignore[no-untyped-def]
    """mergekit's TIES per module on [base, base + delta 1, base + delta 2] (full weights)."""
    from mergekit.merge_methods import get
    from mergekit.merge_methods.base import TensorGroup

    method = get("ties")
    total = 0.0
    for i, (name, fs) in enumerate(inputs.items()):
        base = _base(shapes[name], device, 100 + i)
        models = [base + f.B @ f.A for f in fs]
        _sync(device)
        start = time.perf_counter()
        merged = method.merge_group(
            TensorGroup.from_tensors([base, *models], base_index=0), **MERGEKIT_TIES
        )
        _sync(device)
        total += time.perf_counter() - start
        del merged, models, base
    return total


def _agreement(fs, shape, device: str) -> tuple[float, int, bool]:  # type: ignore[no-untyped-def]
    """hub's TIES delta against mergekit's merged weight minus a random base (relative
    difference, entries kept by one side only) and against mergekit given a zero base (equal?)."""
    from mergekit.merge_methods import get
    from mergekit.merge_methods.base import TensorGroup

    ours = merge.ties([f.B @ f.A for f in fs], list(WEIGHTS), DENSITY)
    results = []
    for base in (_base(shape, device, 7), torch.zeros(shape[1], shape[0], device=device)):
        models = [base + f.B @ f.A for f in fs]
        group = TensorGroup.from_tensors([base, *models], base_index=0)
        results.append(get("ties").merge_group(group, **MERGEKIT_TIES) - base)
        del models, base, group
    theirs, theirs_exact = results
    relative = float((ours.double() - theirs.double()).norm() / ours.double().norm())
    kept_by_one = int(((ours != 0) != (theirs != 0)).sum())
    return relative, kept_by_one, bool(torch.equal(ours, theirs_exact))


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", choices=list(SHAPES), default="7b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modules", help="comma-separated subset of the layer's modules")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    shapes = SHAPES[args.shapes]
    if args.modules:
        shapes = {n: shapes[n] for n in args.modules.split(",")}
    inputs = _inputs(shapes, args.device)
    hub_side(inputs, args.device, factor=True)  # warm-up: kernels, plans, the allocator
    mergekit_side(inputs, shapes, args.device)
    hub_full, hub_ties, theirs = [], [], []
    for _ in range(args.runs):  # alternated, so both sides see the same machine
        hub_full.append(hub_side(inputs, args.device, factor=True)[1])
        hub_ties.append(hub_side(inputs, args.device, factor=False)[1])
        theirs.append(mergekit_side(inputs, shapes, args.device))
    t_full, t_ties, t_mk = (statistics.median(x) for x in (hub_full, hub_ties, theirs))
    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device: {where} ({torch.get_num_threads()} threads), {args.shapes} shapes,"
          f" modules {', '.join(shapes)}; median of {args.runs} runs after a warm-up")  # fmt: skip
    n = len(shapes)
    print(table(
        ["operation", "time", "speed-up vs mergekit"],
        [[f"mergekit ties, full weights in and out, {n} modules", f"{t_mk:.3f} s", "1x"],
         [f"hub ties, dense delta from the factors, {n} modules", f"{t_ties:.3f} s",
          f"{t_mk / t_ties:.1f}x"],
         [f"hub ties + factor to rank {RANK} (hub compose ties --rank {RANK}), {n} modules",
          f"{t_full:.3f} s", f"{t_mk / t_full:.1f}x"]],
    ))  # fmt: skip
    largest = max(shapes, key=lambda m: shapes[m][0] * shapes[m][1])
    relative, differs, equal = _agreement(inputs[largest], shapes[largest], args.device)
    size = shapes[largest][0] * shapes[largest][1]
    print(f"{largest}: hub's TIES delta vs mergekit's (merged - base): relative difference"
          f" {relative:.1e}, {differs} of {size} entries kept by one side only (the base's fp32"
          f" round trip moves values across the trim threshold); with a zero base:"
          f" {'identical' if equal else 'DIFFERENT'}")  # fmt: skip


if __name__ == "__main__":
    main()
