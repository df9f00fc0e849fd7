"""Export of a ~1 GB bf16 sharded Llama base + LoRA, side by side with its peers.

Each operation runs in its own process (peak RSS is that process's ``ru_maxrss``):

- ``python -c 'import torch'``: no export, the start-up every torch program pays first;
- ``cp -r`` of the base folder (the floor: bytes in, bytes out);
- PEFT: ``from_pretrained`` + ``PeftModel.from_pretrained`` + ``merge_and_unload`` +
  ``save_pretrained`` (what users run today);
- ``hub export --format safetensors`` (the base copied kernel-side while torch imports, then
  the changed tensors merged in fp32 and written over the copy);
- ``hub export --format gguf --quant q8_0`` (merged, quantized, tensor by tensor).

The base: hidden 2048, intermediate 5632, 8 layers (``--layers``), vocab 32000, bf16, ~200 MB
shards (~1.08 GB; 32 layers: ~3.9 GB); the LoRA: rank 16 on every projection (87% of the
bytes change). Medians of the rounds.

Two conditions, each operation measured under both:

- ``cold``: the page cache is dropped before each operation (needs root; skipped otherwise)
  and the tools (python, torch, peft) read back in, so every operation reads the base from
  disk, as when exporting a model trained earlier;
- ``warm``: the base is read once first, so reads come from memory.

hub fsyncs what it exports before renaming it into place; ``cp -r`` does not (its writes are
still in memory when it exits), so ``cp -r && sync`` is shown too: the copy with its bytes on
disk, which is what "close to the disk's limit" compares against.

Usage: python benchmarks/export_1gb.py [--rounds 1] [--condition cold|warm|both] [--layers 8]
    [--skip PEFT] [--skip gguf]
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

HIDDEN, INTER, VOCAB, RANK = 2048, 5632, 32000, 16
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
TOOLS = "import torch, transformers, peft, gguf, compose.deploy.api"
HUB_SCRIPT = """
import sys
from compose.deploy import export_model
base, adapter, out, fmt = sys.argv[1:5]
export_model([adapter], base, out, format=fmt, quant="q8_0" if fmt == "gguf" else None)
"""


def build(work: Path, layers: int) -> tuple[Path, Path]:
    import torch
    from peft import LoraConfig

    from compose.deploy.writers import StreamWriter
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
    for layer in range(layers):
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
        "num_hidden_layers": layers,
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
    for layer in range(layers):
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


def drop_caches() -> bool:
    """Write back and drop the page cache (root only); False when not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def warm_up(base: Path) -> None:
    """Read the base into the page cache (in a child: this process must stay small)."""
    os.sync()
    subprocess.run(
        ["cat", *map(str, sorted(base.iterdir()))], check=True, stdout=subprocess.DEVNULL
    )


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
    parser.add_argument("--condition", choices=["cold", "warm", "both"], default="both")
    parser.add_argument(
        "--layers", type=int, default=8, help="decoder layers (8: ~1.08 GB; 32: ~3.9 GB)"
    )
    parser.add_argument("--skip", action="append", default=[], help="skip operations matching")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = WORK / ("export1gb" if args.layers == 8 else f"export-{args.layers}l")
    if args.build_only:
        build(work, args.layers)
        return
    # Built in a child: a forked child's ru_maxrss starts at its parent's RSS, so this process
    # must stay small for the measurements below to be the commands' own.
    subprocess.run(
        [sys.executable, __file__, "--build-only", "--layers", str(args.layers)],
        check=True,
        cwd=ROOT,
    )
    base, adapter = work / "base", work / "adapter"
    size = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    py = sys.executable
    ops = {
        "python -c 'import torch' (startup floor)": [py, "-c", "import torch"],
        "cp -r base": ["cp", "-r", str(base), "{out}"],
        "cp -r base && sync": ["sh", "-c", f"cp -r {base} {{out}} && sync"],
        "PEFT merge_and_unload + save_pretrained": [
            py,
            "-c",
            PEFT_SCRIPT,
            str(base),
            str(adapter),
            "{out}",
        ],
        "hub export --format safetensors": [
            py,
            "-c",
            HUB_SCRIPT,
            str(base),
            str(adapter),
            "{out}",
            "safetensors",
        ],
        "hub export --format gguf --quant q8_0": [
            py,
            "-c",
            HUB_SCRIPT,
            str(base),
            str(adapter),
            "{out}",
            "gguf",
        ],
    }
    ops = {k: v for k, v in ops.items() if not any(skip in k for skip in args.skip)}
    conditions = ["cold", "warm"] if args.condition == "both" else [args.condition]
    if "cold" in conditions and not drop_caches():
        print("cold: skipped (dropping the page cache needs root)")
        conditions.remove("cold")
    print(
        f"base: {size / 1e9:.2f} GB bf16 in {len(list(base.glob('*.safetensors')))} shards,"
        f" LoRA rank {RANK} on 7 projections x {args.layers} layers;"
        f" median of {args.rounds} round(s)"
    )
    out = work / "out"
    for condition in conditions:
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in ops}
        for _ in range(args.rounds):
            for name, template in ops.items():
                shutil.rmtree(out, ignore_errors=True)
                if condition == "cold":
                    drop_caches()
                    # Only the base is cold: the tools (python, torch, peft) are read back in.
                    subprocess.run([py, "-c", TOOLS], check=True, cwd=ROOT)
                else:
                    warm_up(base)
                cmd = [part.replace("{out}", str(out)) for part in template]
                results[name].append(measure(cmd))
                shutil.rmtree(out, ignore_errors=True)
        print(f"\n{condition}:")
        print(report(results, size))


def report(results: dict[str, list[tuple[float, float]]], size: int) -> str:
    copy_t = median([t for t, _ in results["cp -r base"]])
    synced_t = median([t for t, _ in results["cp -r base && sync"]])
    peft = results.get("PEFT merge_and_unload + save_pretrained") or [(float("nan"),) * 2]
    peft_t, peft_rss = median([t for t, _ in peft]), median([r for _, r in peft])
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
                f"{t / synced_t:.2f}x",
                f"{t / peft_t:.2f}x",
                f"{rss / peft_rss:.0%}",
            ]
        )
    headers = [
        "operation",
        "wall time",
        "base MB/s",
        "peak RSS",
        "vs cp",
        "vs cp+sync",
        "vs PEFT",
        "RSS vs PEFT",
    ]
    return table(headers, rows)


if __name__ == "__main__":
    main()
