"""`hub eval` vs lm-evaluation-harness on the same adapter, data and device, side by side.

A random Llama-architecture base (a `--config`: `tiny` for the CPU, `1b` for a GPU) with a
BPE tokenizer trained offline, a LoRA adapter saved by PEFT, and a multiple-choice data set
written twice: as hub's JSONL (`{"prompt", "choices", "answer"}`) and as a local lm-eval task
YAML over that same file (`output_type: multiple_choice`, `target_delimiter: ""`, so both score
`prompt + choice` with the choice's tokens after the prompt's).

  * lm-eval: what a user runs, `HFLM(pretrained=BASE, peft=ADAPTER)` + `simple_evaluate` of
    the task with `log_samples=True` (model load included);
  * hub: what `hub eval` runs, the base and adapter loaded as it loads them (`hub.evals`,
    `compose.composites.load_composed`), the file read and checked (`compose.eval_data`) and
    scored (`compose.evaluate.score`); the record's storage (a few ms) is left out.

Rounds alternate the two; the table gives the median wall time of each and the ratio.
Identity: the largest difference between the per-choice summed log-likelihoods (lm-eval's
per-sample log against hub's `Scored.choice_logprobs`), absolute and relative to the value, and
whether the accuracies are equal; and, for scale, lm-eval against itself at half the batch size
(the same runner, only the batching changed) and each runner against float64 (PEFT's own model
in float64, one sequence at a time: the value both fp32 runners approximate). lm-eval returns
each log-likelihood as an fp32 sum (`float(logits.sum())`: one ulp is 1.9e-6 at |ll| =
16..32), hub sums the same fp32 log-probabilities in float64, so the bound is relative: 1e-6 of
the value. On a GPU cuBLAS picks its fp32 kernels by shape, and lm-eval moves further than that
against itself when only its batch size changes; there hub must stay within the larger of 1e-6
and lm-eval's own spread (half batch, or its distance to float64). The script exits non-zero
past that bound (fp32), or if the accuracies differ.

Usage: python benchmarks/eval_vs_lm_eval.py [--config tiny|small|1b] [--rows 200]
       [--choices 4] [--batch-size 16] [--device auto] [--dtype fp32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from benchmarks._util import median, table

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, heads=4, kv=2),
    "small": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, heads=8, kv=4),
    # Llama-3.2-1B's shapes (vocabulary aside: the tokenizer is trained here, offline).
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, heads=32, kv=8),
}

_CORPUS = (
    "the quick brown fox jumps over the lazy dog while a merged adapter ships to llama cpp "
    "and vllm serves many loras on one base model with tokens bytes and merges of weights "
    "rank alpha dropout target modules query value key output gate up down projection"
)
WORDS = _CORPUS.split()


def _tokenizer(folder: Path, vocab: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    rng = random.Random(0)
    corpus = [" ".join(rng.choices(WORDS, k=30)) for _ in range(500)]
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)
    return fast


def random_base(root: Path, config: str, max_positions: int = 512) -> tuple[Path, Any]:
    """A random Llama-architecture base of ``config``'s shapes with an offline-trained BPE
    tokenizer, saved to ``root / "base"``: the folder and the model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = CONFIGS[config]
    base = root / "base"
    tok = _tokenizer(base, 2000)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            # = len(tokenizer): lm-eval's peft= path resizes the embeddings otherwise
            vocab_size=len(tok),
            hidden_size=shape["hidden_size"],
            intermediate_size=shape["intermediate_size"],
            num_hidden_layers=shape["num_hidden_layers"],
            num_attention_heads=shape["heads"],
            num_key_value_heads=shape["kv"],
            max_position_embeddings=max_positions,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )
    model.save_pretrained(base)
    return base, model


def build(root: Path, config: str, rows: int, choices: int) -> tuple[Path, Path, Path, Path]:
    """base folder, adapter folder, data JSONL, task folder."""
    import torch
    from peft import LoraConfig, get_peft_model

    base, model = random_base(root, config)
    peft_model = get_peft_model(
        model,
        LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    )
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    adapter = root / "lora"
    peft_model.save_pretrained(adapter)

    rng = random.Random(1)
    data = root / "mc.jsonl"
    with data.open("w") as f:
        for _ in range(rows):
            prompt = " ".join(rng.choices(WORDS, k=rng.randint(8, 48)))
            options = [
                " " + " ".join(rng.choices(WORDS, k=rng.randint(1, 6))) for _ in range(choices)
            ]
            row = {"prompt": prompt, "choices": options, "answer": rng.randrange(choices)}
            f.write(json.dumps(row) + "\n")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "bench_mc.yaml").write_text(
        "task: bench_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{prompt}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        'target_delimiter: ""\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return base, adapter, data, tasks


Run = tuple[float, list[list[float]], float]
"""Wall seconds, per-row per-choice log-likelihoods, accuracy."""


def run_lm_eval(base: Path, adapter: Path, tasks: Path, device: str, dtype: str, batch: int) -> Run:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    start = time.perf_counter()
    lm = HFLM(
        pretrained=str(base),
        peft=str(adapter),
        device=device,
        dtype={"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype],
        batch_size=batch,
    )
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=["bench_mc"],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
    )
    _sync(device)
    seconds = time.perf_counter() - start
    assert out is not None
    samples = sorted(out["samples"]["bench_mc"], key=lambda s: s["doc_id"])
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    return seconds, lls, float(out["results"]["bench_mc"]["acc,none"])


def run_hub(base: Path, adapter: Path, data: Path, device: str, dtype: str, batch: int) -> Run:
    from compose.composites import load_composed
    from compose.eval_data import read_eval_data
    from compose.evaluate import device_for, score
    from hub.evals import _tokenizer
    from hub.evals import load_base_model as _load_model

    start = time.perf_counter()
    dev = device_for(device)
    tok = _tokenizer(base)
    model = load_composed(_load_model(base, dtype, dev), adapter)
    dataset = read_eval_data(data)
    scored = score(model, tok, dataset, ["accuracy"], batch_size=batch, device=dev)
    _sync(device)
    seconds = time.perf_counter() - start
    acc = sum(scored.scores["accuracy"]) / len(scored.scores["accuracy"])
    return seconds, scored.choice_logprobs, acc


def reference_fp64(base: Path, adapter: Path, data: Path, device: str) -> list[list[float]]:
    """Each choice's log-likelihood in float64 through PEFT's own model, one sequence at a time
    (no batching, no cache): the value both fp32 runners approximate, so each one's error can be
    read apart from the other's."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from compose.eval_data import read_eval_data
    from compose.evaluate import data_spans
    from hub.evals import _tokenizer

    dataset = read_eval_data(data)
    spans = data_spans(_tokenizer(base), dataset)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float64)
    model = PeftModel.from_pretrained(model, adapter).to(device).eval()
    values = []
    with torch.no_grad():
        for span in spans:
            ids = torch.tensor([span.ids], device=device)
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
            targets = ids[0, 1:]
            picked = logp.gather(1, targets[:, None])[:, 0]
            values.append(float(picked[span.start - 1 :].sum()))
    out, at = [], 0
    for row in dataset.rows:
        out.append(values[at : at + len(row.choices)])
        at += len(row.choices)
    return out


def _max_relative(a: list[list[float]], b: list[list[float]]) -> float:
    return max(
        abs(x - y) / max(1.0, abs(x))
        for ra, rb in zip(a, b, strict=True)
        for x, y in zip(ra, rb, strict=True)
    )


def _sync(device: str) -> None:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--choices", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="bench-lm-eval-") as tmp:
        base, adapter, data, tasks = build(Path(tmp), args.config, args.rows, args.choices)
        times: dict[str, list[float]] = {"lm-eval": [], "hub": []}
        worst, worst_rel, accs = 0.0, 0.0, set()
        for _ in range(args.rounds):
            same = (device, args.dtype, args.batch_size)
            t_lm, ll_lm, acc_lm = run_lm_eval(base, adapter, tasks, *same)
            t_hub, ll_hub, acc_hub = run_hub(base, adapter, data, *same)
            times["lm-eval"].append(t_lm)
            times["hub"].append(t_hub)
            for a, b in zip(ll_lm, ll_hub, strict=True):
                for x, y in zip(a, b, strict=True):
                    worst = max(worst, abs(x - y))
                    worst_rel = max(worst_rel, abs(x - y) / max(1.0, abs(x)))
            accs.add((acc_lm, acc_hub))
        # lm-eval against itself at half the batch size: how far one runner's fp32 sums move
        # when only the batching changes (on a GPU cuBLAS picks its kernels by shape).
        half = max(1, args.batch_size // 2)
        _, ll_half, _ = run_lm_eval(base, adapter, tasks, device, args.dtype, half)
        floor = _max_relative(ll_lm, ll_half)
        truth = reference_fp64(base, adapter, data, device)
        err_lm, err_hub = _max_relative(truth, ll_lm), _max_relative(truth, ll_hub)
    lm_s, hub_s = median(times["lm-eval"]), median(times["hub"])
    cpu = f"CPU, {torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name() if device == "cuda" else cpu
    print(
        f"{args.config} config, {args.rows} rows x {args.choices} choices, batch {args.batch_size},"
        f" {args.dtype}, {name}, median of {args.rounds} rounds"
    )
    [(acc_lm, acc_hub)] = accs
    print(
        table(
            ["runner", "wall time", "accuracy", "time vs lm-eval"],
            [
                [
                    "lm-eval (HFLM peft=, simple_evaluate)",
                    f"{lm_s:.2f} s",
                    f"{acc_lm:.4f}",
                    "1.00x",
                ],
                [
                    "hub eval (load + score)",
                    f"{hub_s:.2f} s",
                    f"{acc_hub:.4f}",
                    f"**{hub_s / lm_s:.2f}x**",
                ],
            ],
        )
    )
    print(
        f"max |loglik(hub) - loglik(lm-eval)| over every choice: {worst:.2e} absolute,"
        f" {worst_rel:.2e} of the value"
    )
    print(
        f"lm-eval at batch {args.batch_size} vs batch {max(1, args.batch_size // 2)}, the same"
        f" runner: {floor:.2e} of the value"
    )
    print(
        f"against float64 through PEFT (one sequence at a time): lm-eval {err_lm:.2e},"
        f" hub {err_hub:.2e} of the value"
    )
    # lm-eval's own spread, measured in this run: what a second lm-eval run could differ by.
    bound = max(1e-6, floor, err_lm)
    ok = worst_rel <= bound if args.dtype == "fp32" else True
    if not ok:
        print(f"log-likelihoods differ by more than {bound:.2e} of their value")
    if acc_lm != acc_hub:
        print("accuracies differ")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
