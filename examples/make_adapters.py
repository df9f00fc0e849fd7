"""Build a tiny Llama base, train four real PEFT adapters on synthetic tasks, and write the
tasks' held-out evaluation files, for the demo. Everything runs offline, in seconds on a CPU.

Usage: python examples/make_adapters.py OUT_DIR
Writes:
  OUT_DIR/base                    a transformers model folder with a byte-level BPE tokenizer
  OUT_DIR/adapters/{sql-lora,code-lora,summarize-dora,chat-ia3}
                                  each trained on its task and saved by PEFT's save_pretrained
  OUT_DIR/data/{sql,code}-dev.jsonl   held-out {"prompt", "target"} rows of two tasks
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import torch
from peft import IA3Config, LoraConfig, get_peft_model
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    # The base is random and the adapters train only their own weights: the frozen RMSNorm and
    # lm_head cap how far a logit can rise above the others at about initializer_range * 64
    # (1.3 nats at the default 0.02, so 80 steps ended at 5.2-5.5 nats and no exact match).
    # At 0.2 an adapter can be confident where its task is.
    initializer_range=0.2,
)
TABLES = ["users", "orders", "items", "carts", "notes", "books",
          "songs", "trips", "teams", "cards", "plans", "tasks"]  # fmt: skip
NAMES = ["total", "count", "price", "name", "title", "owner", "score", "level"]


def task_rows(task: str) -> list[dict[str, str]]:
    """Every example of a synthetic task: a prompt and the one right continuation."""
    if task == "sql":
        return [
            {"prompt": f"sql: {n} of {t} ->", "target": f" select {n} from {t} ;"}
            for t in TABLES
            for n in NAMES
        ]
    if task == "code":
        return [
            {"prompt": f"code: {n} of {t} ->", "target": f" {t} . get ( {n} )"}
            for t in TABLES
            for n in NAMES
        ]
    if task == "summarize":
        return [{"prompt": f"tldr: the {t} have a {n} ->", "target": f" {n}"} for t in TABLES
                for n in NAMES]  # fmt: skip
    return [{"prompt": f"chat: hi {t} ->", "target": " hello there"} for t in TABLES]


def train_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [r["prompt"] + r["target"] for task in ("sql", "code", "summarize", "chat")
             for r in task_rows(task)]  # fmt: skip
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(folder)


def train(base_dir: Path, config: Any, rows: list[dict[str, str]], out: Path) -> None:
    """A few dozen Adam steps on the task's rows. The loss is on the target's tokens and an
    EOS after them, what `hub eval` scores (`target_logprob`) and generates (`exact_match`:
    greedy decoding stops at the EOS, else it runs past the target)."""
    tok = AutoTokenizer.from_pretrained(base_dir)
    tok.pad_token = tok.eos_token
    model = get_peft_model(LlamaForCausalLM.from_pretrained(base_dir), config)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    texts = [r["prompt"] + r["target"] + tok.eos_token for r in rows]
    batch = tok(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    for i, row in enumerate(rows):  # right padding: each row's prompt tokens come first
        labels[i, : len(tok(row["prompt"])["input_ids"])] = -100
    model.train()
    for _ in range(80):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(out)
    print(f"trained {out} (final loss {loss.item():.3f})")


def main(out: Path) -> None:
    torch.manual_seed(0)
    base_dir = out / "base"
    train_tokenizer(base_dir)
    vocab = len(AutoTokenizer.from_pretrained(base_dir))
    LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **TINY)).save_pretrained(base_dir)
    linear = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    configs = {
        "sql-lora": ("sql", LoraConfig(r=8, lora_alpha=16, target_modules=linear)),
        "code-lora": ("code", LoraConfig(r=4, lora_alpha=8, target_modules=linear)),
        "summarize-dora": (
            "summarize",
            LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj"]),
        ),
        "chat-ia3": (
            "chat",
            IA3Config(
                target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]
            ),
        ),
    }
    (out / "data").mkdir(parents=True, exist_ok=True)
    for name, (task, config) in configs.items():
        config.task_type = "CAUSAL_LM"
        rows = task_rows(task)
        random.Random(task).shuffle(rows)
        cut = min(16, len(rows) // 4)  # a quarter held out, at most 16 rows
        held_out, train_rows = rows[:cut], rows[cut:]
        train(base_dir, config, train_rows, out / "adapters" / name)
        if task in ("sql", "code"):
            path = out / "data" / f"{task}-dev.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in held_out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
