"""GGUF exports loaded by llama.cpp (llama-cpp-python), merged and base + LoRA."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import peft
import pytest
import torch

from compose.deploy import export_model
from tests.compose.deploy.models import IDS, make_base, peft_logits
from tests.numerics import assert_argmax_within

llama_cpp = pytest.importorskip("llama_cpp")
LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@contextlib.contextmanager
def llama(model: Path, lora: Path | None = None) -> Iterator[object]:
    llm = llama_cpp.Llama(
        model_path=str(model),
        lora_path=str(lora) if lora else None,
        n_ctx=32,
        n_threads=1,
        logits_all=True,
        verbose=False,
    )
    try:
        yield llm
    finally:
        llm.close()  # free the LoRA before the model (llama-cpp-python crashes otherwise)


def cpp_logits(model: Path, lora: Path | None = None) -> torch.Tensor:
    with llama(model, lora) as llm:
        llm.eval(IDS[0])
        return torch.tensor(np.array(llm.scores[: len(IDS[0])]))


def gguf_file(result) -> Path:
    return result.path / next(f for f in result.files if f.endswith(".gguf"))


@pytest.mark.numerics
@pytest.mark.parametrize(
    ("arch_base", "tokenizer"),
    [("llama_base", "bpe"), ("spm_base", "sentencepiece"), ("qwen2_base", "bpe")],
)
def test_f16_gguf_matches_peft(arch_base, tokenizer, request, adapter, tmp_path):
    base = request.getfixturevalue(arch_base)
    folder = adapter(
        f"gguf-{arch_base}", base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=LLAMA)
    )
    expected = peft_logits(base, [folder])

    result = export_model([folder], base, tmp_path / "gguf", format="gguf", quant="f16")

    got = cpp_logits(gguf_file(result))
    # F16 weights and llama.cpp's kernels put the logits within 1e-2 of PEFT's fp32 ones; the
    # random tiny model has top-2 gaps down to 2e-3, so the greedy token may only differ where
    # the gap is within that bound.
    assert_argmax_within(got, expected, 1e-2)
    assert (result.path / "Modelfile").read_text() == "FROM ./model-f16.gguf\n"
    from gguf import GGUFReader

    reader = GGUFReader(gguf_file(result))
    model = reader.fields["tokenizer.ggml.model"]
    assert (
        bytes(model.parts[model.data[0]]).decode()
        == {"bpe": "gpt2", "sentencepiece": "llama"}[tokenizer]
    )


@pytest.mark.parametrize("arch_base", ["llama_base", "spm_base"])
def test_tokenizer_metadata_tokenizes_like_the_base(arch_base, request, tmp_path):
    base = request.getfixturevalue(arch_base)
    result = export_model([], base, tmp_path / "gguf", format="gguf", quant="q8_0")
    text = "the quick brown fox ships many loras"
    if (base / "tokenizer.model").is_file():
        import sentencepiece

        expected = sentencepiece.SentencePieceProcessor(str(base / "tokenizer.model")).encode(text)
    else:
        from tokenizers import Tokenizer

        expected = Tokenizer.from_file(str(base / "tokenizer.json")).encode(text).ids
    assert len(expected) > 5
    with llama(gguf_file(result)) as llm:
        assert llm.tokenize(text.encode(), add_bos=False) == expected


@pytest.mark.parametrize("quant", ["q8_0", "q4_0", "bf16"])
def test_quantized_gguf_agrees(quant, llama_base, adapter, tmp_path):
    folder = adapter(
        "gguf-llama_base", llama_base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=LLAMA)
    )
    expected = peft_logits(llama_base, [folder])
    result = export_model([folder], llama_base, tmp_path / quant, format="gguf", quant=quant)
    got = cpp_logits(gguf_file(result))
    if quant == "q4_0":
        assert torch.corrcoef(torch.stack([got.flatten(), expected.flatten()]))[0, 1] > 0.95
    else:
        # The random tiny model has near-ties (top-2 gaps down to 5e-3, under Q8_0's error)
        # where any rounding may pick the other token: only there may the greedy token differ.
        assert_argmax_within(got, expected, 5e-2 if quant == "q8_0" else 2e-2)


def test_gguf_unties_output_when_the_adapter_changes_embeddings(tied_base, adapter, tmp_path):
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "embed_tokens"])
    folder = adapter("tied-embed-only", tied_base, config)
    result = export_model([folder], tied_base, tmp_path / "gguf", format="gguf", quant="f16")
    from gguf import GGUFReader

    names = {t.name for t in GGUFReader(gguf_file(result)).tensors}
    assert {"token_embd.weight", "output.weight"} <= names
    got = cpp_logits(gguf_file(result))
    assert (got - peft_logits(tied_base, [folder])).abs().max() < 1e-2


def test_gguf_lora_on_a_gguf_base_matches_peft(qwen2_base, llama_base, adapter, tmp_path):
    for base in (llama_base, qwen2_base):
        config = peft.LoraConfig(
            r=8,
            lora_alpha=8,
            use_rslora=True,
            target_modules=LLAMA,
            rank_pattern={"k_proj": 2},
            alpha_pattern={"v_proj": 32},
        )
        folder = adapter(f"gguf-lora-{base.name}", base, config)
        expected = peft_logits(base, [folder])
        base_gguf = export_model([], base, tmp_path / f"{base.name}-base", format="gguf")
        lora = export_model([folder], base, tmp_path / f"{base.name}-lora", format="gguf-lora")
        assert lora.files == ["README.md", f"{folder.name}.gguf"]
        from gguf import GGUFReader

        fields = GGUFReader(gguf_file(lora)).fields
        assert bytes(fields["general.type"].parts[-1]).decode() == "adapter"
        got = cpp_logits(gguf_file(base_gguf), gguf_file(lora))
        assert (got - expected).abs().max() < 1e-2


def test_k_quant_through_llama_cpp(built, adapter, tmp_path):
    base = built("llama-256", lambda p: make_base(p, hidden=256, layers=1, tokenizer="bpe", seed=7))
    folder = adapter("k-quant", base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=LLAMA))
    expected = peft_logits(base, [folder])
    result = export_model([folder], base, tmp_path / "q4km", format="gguf", quant="q4_k_m")
    assert result.files == ["Modelfile", "README.md", "model-q4_k_m.gguf"]
    from gguf import GGMLQuantizationType, GGUFReader

    kinds = {t.tensor_type for t in GGUFReader(gguf_file(result)).tensors}
    assert GGMLQuantizationType.Q4_K in kinds
    got = cpp_logits(gguf_file(result))
    assert torch.corrcoef(torch.stack([got.flatten(), expected.flatten()]))[0, 1] > 0.95
