"""`hub ls --json` on a registry of 10,000 versions, side by side with interpreter start-up.

Builds (once, cached in benchmarks/.work/ls10k) a registry of 1,000 repositories x 10
versions by pushing real PEFT-format adapter folders through the Registry API, then times
the CLI as a user runs it (a fresh process each time) and proves no read command imports
torch, transformers or peft.

Usage: python benchmarks/ls_10k.py [--versions 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._util import WORK, median, run_cmd, table

HUB = [sys.executable, "-m", "cli.main"]
TASKS = ["sql", "summarization", "chat", "code", "math", "translation"]


def _adapter(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rank = [4, 8, 16, 32][seed % 4]
    tensors = {}
    for layer in range(2):
        for module in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((rank, 64), np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((64, rank), np.float32)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": rank,
                "lora_alpha": 2 * rank,
                "target_modules": ["q_proj", "v_proj"],
                "base_model_name_or_path": "org/base-7b",
            }
        )
    )
    task = TASKS[(seed // 10) % len(TASKS)]
    (folder / "README.md").write_text(f"Adapter {seed} for {task}.")


def _build_part(args: tuple[Path, int, int, int]) -> None:
    from hub import Registry

    home, start, stop, versions_per_repo = args
    scratch = home.parent / f"scratch-{start}"
    with Registry(home) as reg:
        for i in range(start, stop):
            repo, version = divmod(i, versions_per_repo)
            folder = scratch / str(i)
            _adapter(folder, i)
            reg.push(
                folder,
                name=f"team-{repo % 10}/adapter-{repo}",
                tasks=[TASKS[repo % len(TASKS)]],
                tags=[f"stage={'prod' if version else 'dev'}"],
                metrics=[f"accuracy={(i % 97) / 97:.3f}"],
            )
            shutil.rmtree(folder)
    shutil.rmtree(scratch, ignore_errors=True)


def build(home: Path, total: int, versions_per_repo: int = 10) -> None:
    marker = home / f"built-v2-{total}"
    if marker.exists():
        return
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    # The cores this process may use (a container or taskset limits them; cpu_count is the
    # host's), so the build does not start dozens of processes on a 2-core CI runner.
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    workers = len(usable) if usable else os.cpu_count() or 2
    step = -(-total // (workers * 8))
    # Parts are whole repositories so each repository's versions come from one process.
    step = -(-step // versions_per_repo) * versions_per_repo
    parts = [(home, s, min(s + step, total), versions_per_repo) for s in range(0, total, step)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_build_part, parts))
    marker.touch()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    home = WORK / "ls10k" / "home"
    build(home, args.versions)
    env = {**os.environ, "HUB_HOME": str(home)}
    root = Path(__file__).resolve().parents[1]

    count = len(
        json.loads(
            subprocess.run(
                [*HUB, "ls", "--json", "--all-versions"],
                env=env,
                cwd=root,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
    )
    assert count == args.versions, count

    cases = {
        "python -c pass (interpreter start)": [sys.executable, "-c", "pass"],
        "python -c 'import torch' (for scale)": [sys.executable, "-c", "import torch"],
        "hub ls --json (1,000 latest cards)": [*HUB, "ls", "--json"],
        f"hub ls --json --all-versions ({count:,} cards)": [*HUB, "ls", "--json", "--all-versions"],
        "hub ls sql --rank '<=16' --sort metric:accuracy --limit 20": [
            *HUB,
            "ls",
            "sql",
            "--rank",
            "<=16",
            "--sort",
            "metric:accuracy",
            "--limit",
            "20",
        ],
        "hub show team-3/adapter-503 --json": [*HUB, "show", "team-3/adapter-503", "--json"],
    }
    results = {}
    for label, cmd in cases.items():
        run_cmd(cmd, env=env, cwd=root)  # warm the page cache
        results[label] = median([run_cmd(cmd, env=env, cwd=root) for _ in range(args.runs)])
    start_up = results["python -c pass (interpreter start)"]
    rows = [[label, f"{t * 1000:.0f} ms", f"{t / start_up:.1f}x"] for label, t in results.items()]
    print(table(["command", f"median of {args.runs}", "vs interpreter start"], rows))

    probe = (
        "import sys; from cli.main import cli\n"
        "for argv in (['ls', '--json', '--all-versions'], ['show', 'team-3/adapter-503']):\n"
        "    try: cli(argv, standalone_mode=False)\n"
        "    except SystemExit: pass\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules)\n"
        "sys.stderr.write(f'heavy modules imported by read commands: {heavy or None}\\n')\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    print(proc.stderr.strip())
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
