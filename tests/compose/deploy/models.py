"""Tiny bases (with offline-trained tokenizers) and real PEFT adapters for the deploy tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

WORDS = (
    "the quick brown fox jumps over the lazy dog while a merged adapter ships to llama cpp "
    "and vllm serves many loras on one base model with tokens bytes and merges\n"
)


def train_bpe(folder: Path, vocab_size: int = 300) -> None:
    """A byte-level BPE tokenizer trained on a few lines, saved as PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([WORDS] * 50, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)


def train_spm(folder: Path, vocab_size: int = 300) -> None:
    """A SentencePiece (Llama-style) tokenizer trained offline, saved with tokenizer.model."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    text = folder / "corpus.txt"
    folder.mkdir(parents=True, exist_ok=True)
    text.write_text(WORDS * 20)
    spm.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    text.unlink()
    (folder / "tokenizer.vocab").unlink()
    LlamaTokenizer(vocab_file=str(folder / "tokenizer.model")).save_pretrained(folder)


def make_base(
    folder: Path,
    arch: str = "llama",
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 300,
    tied: bool = False,
    tokenizer: str | None = None,
    shard: str | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    **extra: Any,
) -> Path:
    """Save a random tiny model of ``arch`` (llama, mistral, qwen2, mixtral, gpt2) in ``folder``."""
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, tie_word_embeddings=tied, **extra)
    if arch == "gpt2":
        config = transformers.GPT2Config(
            n_embd=hidden, n_layer=layers, n_head=heads, n_positions=64, **common
        )
        model = transformers.GPT2LMHeadModel(config)
    else:
        cls = {
            "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
            "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
            "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
            "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM),
        }[arch]
        config = cls[0](
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=128,
            **common,
        )
        model = cls[1](config)
    with torch.no_grad():  # random norms, so a wrong norm mapping shows in the logits
        for name, param in model.named_parameters():
            if "norm" in name or "ln_" in name:
                param.add_(0.2 * torch.randn_like(param))
    if dtype is not None:
        model = model.to(dtype)
    if shard:
        model.save_pretrained(folder, max_shard_size=shard)
    else:
        model.save_pretrained(folder)
    if tokenizer == "bpe":
        train_bpe(folder, vocab)
    elif tokenizer == "spm":
        train_spm(folder, vocab)
    return folder


def make_adapter(folder: Path, base: Path, config: Any, seed: int = 1, scale: float = 0.05) -> Path:
    """Save a real PEFT adapter whose weights are perturbed (stand-in for training)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if param.requires_grad:
                noise = scale * torch.randn(param.shape, generator=generator)
                if "magnitude" in name or "ia3_l" in name:
                    param.mul_(1 + noise)
                else:
                    param.add_(noise)
    peft_model.save_pretrained(folder)
    return folder


IDS = [[1, 5, 9, 42, 7, 3, 11, 60]]


def peft_logits(base: Path, adapters: list[Path], ids: list[list[int]] = IDS) -> torch.Tensor:
    """Logits of the unmerged PEFT model in fp32 (adapters stacked: each merged before the next)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    for i, adapter in enumerate(adapters):
        model = PeftModel.from_pretrained(model, adapter)
        if i < len(adapters) - 1:
            model = model.merge_and_unload()
    model.eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits[0].float()


def hf_logits(folder: Path, ids: list[list[int]] = IDS, dtype: Any = torch.float32) -> torch.Tensor:
    """Logits of a model folder loaded by transformers."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    model.eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits[0].float()
