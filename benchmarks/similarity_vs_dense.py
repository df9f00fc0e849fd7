"""Adapter similarity in low rank (`compose.similarity`) vs the dense computation, side by side.

Llama-7B shapes: 32 layers x q, k, v, o, gate, up, down (hidden 4096, intermediate 11008), two
rank-16 LoRA adapters. Both compute the overall cosine <dW1, dW2> / (|dW1| |dW2|) and the
per-module cosines, in float64:
  * dense: form each module's d x k deltas B1 A1 and B2 A2, then their elementwise products
    (what a tool without the low-rank identity does);
  * hub: `compose.similarity.compare`, tr((B1^T B2)(A2 A1^T)) per module, never forming d x k.
Equality: the largest absolute difference between the two, over every module and overall.
Also the spectra of all 224 modules (singular values from the r x r core) for scale.

Usage: python benchmarks/similarity_vs_dense.py [--layers 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._util import median, table, timed
from compose import similarity
from compose.merge import Factors

HIDDEN, INTER, RANK = 4096, 11008, 16
SHAPES = {  # name: (out_features, in_features)
    "q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN, HIDDEN), "v_proj": (HIDDEN, HIDDEN),
    "o_proj": (HIDDEN, HIDDEN), "gate_proj": (INTER, HIDDEN), "up_proj": (INTER, HIDDEN),
    "down_proj": (HIDDEN, INTER),
}  # fmt: skip


def adapter(layers: int, seed: int) -> dict[str, Factors]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for layer in range(layers):
        for name, (d, k) in SHAPES.items():
            out[f"model.layers.{layer}.{name}"] = Factors(
                A=torch.randn(RANK, k, generator=g) * 0.01,
                B=torch.randn(d, RANK, generator=g) * 0.01,
            )
    return out


def dense(first: dict[str, Factors], second: dict[str, Factors]) -> tuple[float, dict]:
    dot = sq1 = sq2 = 0.0
    per_module = {}
    for module, u in first.items():
        du = u.B.double() @ u.A.double()
        dv = second[module].B.double() @ second[module].A.double()
        m_dot, m1, m2 = float((du * dv).sum()), float((du * du).sum()), float((dv * dv).sum())
        per_module[module] = m_dot / (m1 * m2) ** 0.5
        dot, sq1, sq2 = dot + m_dot, sq1 + m1, sq2 + m2
        del du, dv
    return dot / (sq1 * sq2) ** 0.5, per_module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    first, second = adapter(args.layers, 1), adapter(args.layers, 2)
    results: dict[str, object] = {}

    def low_rank() -> None:
        results["hub"] = similarity.compare(first, second)

    def dense_run() -> None:
        results["dense"] = dense(first, second)

    def spectra() -> None:
        results["spectra"] = [similarity.spectrum(u) for u in first.values()]

    hub_times = [timed(low_rank) for _ in range(args.rounds)]
    dense_times = [timed(dense_run) for _ in range(args.rounds)]
    spectra_times = [timed(spectra) for _ in range(args.rounds)]
    ours = results["hub"]
    assert isinstance(ours, similarity.Similarity)
    dense_cos, dense_per_module = results["dense"]  # type: ignore[misc]
    worst = max(
        abs(ours.cosine - dense_cos),
        *(abs(ours.per_module[m]["cosine"] - c) for m, c in dense_per_module.items()),
    )
    modules = len(first)
    t_hub, t_dense, t_spec = median(hub_times), median(dense_times), median(spectra_times)
    print(
        f"{args.layers} layers x {len(SHAPES)} modules = {modules} modules, rank {RANK},"
        f" median of {args.rounds}, torch threads {torch.get_num_threads()}"
    )
    print(
        table(
            ["computation", "time", "vs dense", "overall cosine"],
            [
                ["dense (form B A, elementwise)", f"{t_dense:.3f} s", "1.00x", f"{dense_cos:.3e}"],
                [
                    "hub low rank (compare)",
                    f"{t_hub * 1e3:.1f} ms",
                    f"**{t_dense / t_hub:.0f}x faster**",
                    f"{ours.cosine:.3e}",
                ],
                [f"hub spectra ({modules} modules)", f"{t_spec * 1e3:.1f} ms", "", ""],
            ],
        )
    )
    print(f"largest |low rank - dense| over every cosine: {worst:.2e}")
    if worst > 1e-8:
        sys.exit(f"low-rank cosine differs from dense by {worst:.2e} (> 1e-8)")


if __name__ == "__main__":
    main()
