"""`svd` merge vs PEFT's `add_weighted_adapter(combination_type="svd")`, side by side.

Llama-7B shapes (hidden 4096, intermediate 11008), targets q, k, v, o, up, down, two LoRA
adapters of rank 16 and 8, merged to rank 16 with weights 0.6 / 0.4. Both operate on the same
factors in one process:
  * PEFT: its pure operation on one decoder layer (dense weighted delta, full SVD), timed
    through `add_weighted_adapter` on a PeftModel of that layer;
  * hub: `compose.merge.svd_merge` (QR of the stacked factors, SVD of the small core).
Accuracy: relative Frobenius error of each merged delta against the exact truncated SVD of the
exact weighted delta, computed densely in float64.
Memory (`--memory`, in a fresh process): peak RSS of `svd_merge` over a whole 32-layer adapter
set, against the adapters' own size and the d x k size of one dense delta.

Usage: python benchmarks/svd_merge_vs_peft.py [--device cuda] [--memory]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._util import table
from compose.merge import Factors, svd_merge

HIDDEN, INTER = 4096, 11008
SHAPES = {  # name: (in_features, out_features)
    "q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN, HIDDEN), "v_proj": (HIDDEN, HIDDEN),
    "o_proj": (HIDDEN, HIDDEN), "up_proj": (HIDDEN, INTER), "down_proj": (INTER, HIDDEN),
}  # fmt: skip
RANKS, ALPHAS, WEIGHTS, TARGET_RANK = (16, 8), (32.0, 16.0), (0.6, 0.4), 16


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for name, (fan_in, fan_out) in SHAPES.items():
            setattr(self, name, nn.Linear(fan_in, fan_out, bias=False, device="meta"))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peft_layer(device: str):  # type: ignore[no-untyped-def]
    from peft import LoraConfig, get_peft_model

    layer = Layer().to_empty(device=device)
    targets = list(SHAPES)
    model = get_peft_model(
        layer,
        LoraConfig(r=RANKS[0], lora_alpha=ALPHAS[0], target_modules=targets),
        adapter_name="sql",
    )
    model.add_adapter("chat", LoraConfig(r=RANKS[1], lora_alpha=ALPHAS[1], target_modules=targets))
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=g, device=device) * 0.02)
    return model


def ours(model, device: str) -> tuple[dict[str, Factors], float]:  # type: ignore[no-untyped-def]
    inputs = {}
    for name in SHAPES:
        module = getattr(model.base_model.model, name)
        inputs[name] = [
            Factors(
                A=module.lora_A[a].weight.detach(),
                B=module.lora_B[a].weight.detach() * module.scaling[a],
            )
            for a in ("sql", "chat")
        ]
    _sync(device)
    start = time.perf_counter()
    merged = {
        n: svd_merge(f, list(WEIGHTS), TARGET_RANK, module=n).factors for n, f in inputs.items()
    }
    _sync(device)
    return merged, time.perf_counter() - start


def peft_merge(model, device: str) -> float:  # type: ignore[no-untyped-def]
    _sync(device)
    start = time.perf_counter()
    model.add_weighted_adapter(
        ["sql", "chat"], list(WEIGHTS), "merged", combination_type="svd", svd_rank=TARGET_RANK
    )
    _sync(device)
    return time.perf_counter() - start


def exact_truncated(model, name: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    module = getattr(model.base_model.model, name)
    delta = sum(
        w * module.get_delta_weight(a).double()
        for a, w in zip(("sql", "chat"), WEIGHTS, strict=True)
    )
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return (u[:, :TARGET_RANK] * s[:TARGET_RANK]) @ vh[:TARGET_RANK]


@torch.no_grad()
def speed(device: str) -> None:
    model = peft_layer(device)
    ours(model, device)  # warm-up (kernels, allocator)
    merged, t_ours = min((ours(model, device) for _ in range(3)), key=lambda r: r[1])
    t_peft = peft_merge(model, device)
    rows = [
        ["PEFT add_weighted_adapter(svd), 6 modules", f"{t_peft * 1000:.0f} ms", "1x"],
        ["hub svd_merge, 6 modules", f"{t_ours * 1000:.1f} ms", f"{t_peft / t_ours:.0f}x"],
    ]
    print(
        f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}"
        f" ({torch.get_num_threads()} threads), one Llama-7B layer"
    )
    print(table(["operation", "time", "speed-up"], rows))
    errors = []
    for name in ("q_proj", "down_proj"):
        reference = exact_truncated(model, name)
        module = getattr(model.base_model.model, name)
        peft_delta = module.get_delta_weight("merged").double()
        our_delta = merged[name].delta().double()
        errors.append(
            [
                name,
                f"{float((our_delta - reference).norm() / reference.norm()):.1e}",
                f"{float((peft_delta - reference).norm() / reference.norm()):.1e}",
            ]
        )
    print(table(["module", "hub rel. error", "PEFT rel. error"], errors))


def memory() -> None:
    """Runs in a fresh process: peak RSS of merging a whole 32-layer adapter set."""
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # interpreter + torch
    g = torch.Generator().manual_seed(0)
    pairs = []
    for _ in range(32):
        for fan_in, fan_out in SHAPES.values():
            pairs.append(
                [
                    Factors(
                        A=torch.randn(r, fan_in, generator=g) * 0.02,
                        B=torch.randn(fan_out, r, generator=g) * 0.02 * a / r,
                    )
                    for r, a in zip(RANKS, ALPHAS, strict=True)
                ]
            )
    adapter_bytes = sum(f.A.numel() * 4 + f.B.numel() * 4 for p in pairs for f in p)
    outputs = [svd_merge(p, list(WEIGHTS), TARGET_RANK).factors for p in pairs]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out_bytes = sum(f.A.numel() * 4 + f.B.numel() * 4 for f in outputs)
    print(
        json.dumps(
            {
                "adapter_bytes": adapter_bytes,
                "output_bytes": out_bytes,
                "rss_baseline": baseline,
                "rss_peak": peak,
                "dense_delta_bytes": HIDDEN * INTER * 4,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory", action="store_true", help="run the 32-layer memory check")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory()
        return
    speed(args.device)
    if args.memory:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child"], check=True, capture_output=True, text=True
        ).stdout
        m = json.loads(out)
        mib = lambda n: f"{n / 2**20:.0f} MiB"  # noqa: E731
        print(
            table(
                ["32 layers x 6 modules", "size"],
                [
                    ["both input adapters (fp32)", mib(m["adapter_bytes"])],
                    ["merged adapter", mib(m["output_bytes"])],
                    [
                        "inputs + merged output, held at the end",
                        mib(m["adapter_bytes"] + m["output_bytes"]),
                    ],
                    ["peak RSS above interpreter + torch", mib(m["rss_peak"] - m["rss_baseline"])],
                    ["one dense 4096x11008 fp32 delta", mib(m["dense_delta_bytes"])],
                    [
                        "all 192 dense deltas (what a dense merge touches)",
                        mib(32 * sum(i * o for i, o in SHAPES.values()) * 4),
                    ],
                ],
            )
        )


if __name__ == "__main__":
    main()
