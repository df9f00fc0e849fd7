"""Export of a ~1 GB bf16 sharded Llama base + LoRA, side by side with its peers.

Each operation runs in its own process (peak RSS is that process's ``ru_maxrss``):

- ``cp -r`` of the base folder (the floor: bytes in, bytes out);
- PEFT: ``from_pretrained`` + ``PeftModel.from_pretrained`` + ``merge_and_unload`` +
  ``save_pretrained`` (what users run today);
- ``hub export --format safetensors`` (streaming, tensor by tensor, delta in fp32);
- ``hub export --format gguf --quant q8_0`` (merged, quantized, tensor by tensor).

The base: hidden 2048, intermediate 5632, 8 layers, vocab 32000, bf16, ~200 MB shards
(~1.08 GB); the LoRA: rank 16 on every projection. Medians of the rounds.

Usage: python benchmarks/export_1gb.py [--rounds 1]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._util import WORK, median, table  # noqa: E402

HIDDEN, INTER, LAYERS, VOCAB, RANK = 2048, 5632, 8, 32000, 16
PROJ = {
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (HIDDEN, HIDDEN),
    "self_attn.v_proj": (HIDDEN, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (INTER, HIDDEN),
    "mlp.up_proj": (INTER, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTER),
}  # name: (out, in)

PEFT_SCRIPT = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base, adapter, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
model.save_pretrained(out)
"""
HUB_SCRIPT = """
import sys
from compose.deploy import export_model
base, adapter, out, fmt = sys.argv[1:5]
export_model([adapter], base, out, format=fmt, quant="q8_0" if fmt == "gguf" else None)
"""


def build(work: Path) -> tuple[Path, Path]:
    import torch
    from peft import LoraConfig

    from compose.deploy.stio import StreamWriter
    from tests.compose.deploy.models import train_bpe

    base, adapter = work / "base", work / "adapter"
    if (base / "model.safetensors.index.json").is_file() and adapter.is_dir():
        return base, adapter
    shutil.rmtree(work, ignore_errors=True)
    base.mkdir(parents=True)
    torch.manual_seed(0)
    groups: list[list[tuple[str, tuple[int, ...]]]] = [
        [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    ]
    for layer in range(LAYERS):
        if layer % 2 == 0:
            groups.append([])
        prefix = f"model.layers.{layer}"
        groups[-1] += [(f"{prefix}.{name}.weight", shape) for name, shape in PROJ.items()]
        groups[-1] += [
            (f"{prefix}.input_layernorm.weight", (HIDDEN,)),
            (f"{prefix}.post_attention_layernorm.weight", (HIDDEN,)),
        ]
    groups.append([("lm_head.weight", (VOCAB, HIDDEN)), ("model.norm.weight", (HIDDEN,))])
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        shard = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        writer = StreamWriter(base / shard, [(n, "BF16", s) for n, s in group], {"format": "pt"})
        for name, shape in group:
            data = torch.ones(shape) if len(shape) == 1 else torch.randn(shape) * 0.02
            writer.write(name, data.bfloat16())
            weight_map[name] = shard
        writer.close()
        writer.wait()  # the writes run on a daemon thread: finish them before exiting
    total = sum((base / s).stat().st_size for s in set(weight_map.values()))
    (base / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "vocab_size": VOCAB,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
        "hidden_act": "silu",
    }
    (base / "config.json").write_text(json.dumps(config, indent=2))
    train_bpe(base, 300)
    # A rank-16 LoRA on every projection, written in PEFT's format.
    adapter.mkdir()
    entries, tensors = [], {}
    for layer in range(LAYERS):
        for name, (out_f, in_f) in PROJ.items():
            key = f"base_model.model.model.layers.{layer}.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(RANK, in_f) * 0.01
            tensors[f"{key}.lora_B.weight"] = torch.randn(out_f, RANK) * 0.01
    entries = [(k, "F32", tuple(v.shape)) for k, v in tensors.items()]
    writer = StreamWriter(adapter / "adapter_model.safetensors", entries, {"format": "pt"})
    for key, value in tensors.items():
        writer.write(key, value)
    writer.close()
    writer.wait()
    LoraConfig(
        r=RANK,
        lora_alpha=2 * RANK,
        task_type="CAUSAL_LM",
        target_modules=sorted(n.split(".")[1] for n in PROJ),
        base_model_name_or_path=str(base),
    ).save_pretrained(adapter)
    return base, adapter


def measure(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one command in its own process."""
    env = {
        **os.environ,
        "HUB_DISABLE_PROGRESS": "1",
        "PYTHONPATH": str(ROOT),
        "TRANSFORMERS_VERBOSITY": "error",
    }
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = WORK / "export1gb"
    if args.build_only:
        build(work)
        return
    # Built in a child: a forked child's ru_maxrss starts at its parent's RSS, so this process
    # must stay small for the measurements below to be the commands' own.
    subprocess.run([sys.executable, __file__, "--build-only"], check=True, cwd=ROOT)
    base, adapter = work / "base", work / "adapter"
    size = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    py = sys.executable
    ops = {
        "cp -r base": lambda out: ["cp", "-r", str(base), str(out)],
        "PEFT merge_and_unload + save_pretrained": lambda out: [
            py,
            "-c",
            PEFT_SCRIPT,
            str(base),
            str(adapter),
            str(out),
        ],
        "hub export --format safetensors": lambda out: [
            py,
            "-c",
            HUB_SCRIPT,
            str(base),
            str(adapter),
            str(out),
            "safetensors",
        ],
        "hub export --format gguf --quant q8_0": lambda out: [
            py,
            "-c",
            HUB_SCRIPT,
            str(base),
            str(adapter),
            str(out),
            "gguf",
        ],
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in ops}
    for _ in range(args.rounds):
        for name, make in ops.items():
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            results[name].append(measure(make(out)))
            shutil.rmtree(out, ignore_errors=True)
    copy_t = median([t for t, _ in results["cp -r base"]])
    peft_t = median([t for t, _ in results["PEFT merge_and_unload + save_pretrained"]])
    peft_rss = median([r for _, r in results["PEFT merge_and_unload + save_pretrained"]])
    rows = []
    for name, values in results.items():
        t, rss = median([v[0] for v in values]), median([v[1] for v in values])
        rows.append(
            [
                name,
                f"{t:.2f} s",
                f"{size / 1e6 / t:.0f} MB/s",
                f"{rss:.0f} MiB",
                f"{t / copy_t:.2f}x",
                f"{t / peft_t:.2f}x",
                f"{rss / peft_rss:.0%}",
            ]
        )
    print(
        f"base: {size / 1e9:.2f} GB bf16 in {len(list(base.glob('*.safetensors')))} shards,"
        f" LoRA rank {RANK} on 7 projections x {LAYERS} layers; median of {args.rounds} round(s)"
    )
    print(
        table(
            [
                "operation",
                "wall time",
                "base MB/s",
                "peak RSS",
                "time vs cp",
                "time vs PEFT",
                "RSS vs PEFT",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
