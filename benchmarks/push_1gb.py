"""Push of a 1 GB adapter, side by side with `sha256sum` + `cp` of the same file.

The adapter is a real PEFT-format LoRA (rank 100, fp32, q/k/v/o/gate/up/down of 32 Llama-7B
layers: ~1.0 GB). Each round runs, in alternation: `sha256sum F && cp F DST`, and a `hub push`
of the folder into an empty registry (hashing, NaN/Inf scan, copy into the store, fsync,
index commit). Medians of the rounds; throughput is the file size over the wall time.

Usage: python benchmarks/push_1gb.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._util import WORK, median, table

HIDDEN, INTERMEDIATE, LAYERS, RANK = 4096, 11008, 32, 100
SHAPES = {  # module: (in_features, out_features)
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (HIDDEN, HIDDEN),
    "self_attn.v_proj": (HIDDEN, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (HIDDEN, INTERMEDIATE),
    "mlp.up_proj": (HIDDEN, INTERMEDIATE),
    "mlp.down_proj": (INTERMEDIATE, HIDDEN),
}


def build_adapter(folder: Path, layers: int = LAYERS) -> Path:
    """Write the safetensors file tensor by tensor (no 1 GB buffer in memory): ``layers``
    Llama-7B decoder layers' worth of LoRA factors (31 MB each)."""
    weights = folder / "adapter_model.safetensors"
    if weights.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    order = []
    offset = 0
    for layer in range(layers):
        for module, (fan_in, fan_out) in SHAPES.items():
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            for key, shape in (
                (f"{prefix}.lora_A.weight", (RANK, fan_in)),
                (f"{prefix}.lora_B.weight", (fan_out, RANK)),
            ):
                size = shape[0] * shape[1] * 4
                header[key] = {
                    "dtype": "F32",
                    "shape": list(shape),
                    "data_offsets": [offset, offset + size],
                }
                order.append((key, shape))
                offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = weights.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(len(blob).to_bytes(8, "little"))
        fh.write(blob)
        for _key, shape in order:
            fh.write((rng.standard_normal(shape, dtype=np.float32) * 0.01).tobytes())
    os.replace(tmp, weights)
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": RANK,
                "lora_alpha": 2 * RANK,
                "base_model_name_or_path": "meta-llama/Llama-2-7b-hf",
                "target_modules": sorted(m.split(".")[1] for m in SHAPES),
            }
        )
    )
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    work = WORK / "push1gb"
    folder = build_adapter(work / "adapter")
    weights = folder / "adapter_model.safetensors"
    size = weights.stat().st_size
    env = {**os.environ, "HUB_DISABLE_PROGRESS": "1"}
    peer_times, hub_times = [], []
    for _ in range(args.rounds):
        dst = work / "copy.safetensors"
        start = time.perf_counter()
        subprocess.run(["sha256sum", str(weights)], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cp", str(weights), str(dst)], check=True)
        peer_times.append(time.perf_counter() - start)
        dst.unlink()

        home = work / "home"
        shutil.rmtree(home, ignore_errors=True)
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cli.main",
                "--home",
                str(home),
                "push",
                str(folder),
                "--name",
                "bench/lora-1gb",
            ],
            check=True,
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        hub_times.append(time.perf_counter() - start)
        shutil.rmtree(home)
    peer, hub = median(peer_times), median(hub_times)
    gb = size / 1e9
    rows = [
        ["sha256sum F && cp F DST", f"{peer:.2f} s", f"{gb / peer:.2f} GB/s", "1.00x"],
        [
            "hub push (hash + NaN scan + store + fsync + index)",
            f"{hub:.2f} s",
            f"{gb / hub:.2f} GB/s",
            f"{hub / peer:.2f}x",
        ],
    ]
    print(f"file: {size / 1e9:.2f} GB, median of {args.rounds} rounds")
    print(table(["operation", "wall time", "throughput", "time vs peer"], rows))


if __name__ == "__main__":
    main()
