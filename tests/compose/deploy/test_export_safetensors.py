"""Merged safetensors exports, loaded by transformers, against PEFT's unmerged model (fp32)."""

from __future__ import annotations

import errno
import json
import os
import shutil

import peft
import pytest
import torch
from safetensors import safe_open

import compose.deploy.merged
from compose.deploy import export_model
from compose.deploy.base import BaseFolder
from compose.deploy.stio import read_header
from tests.compose.deploy.models import IDS, hf_logits, peft_logits
from tests.numerics import assert_rounded_once, gamma

LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

METHODS = {
    "lora-patterns-modules-to-save": lambda: peft.LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "down_proj"],
        rank_pattern={"k_proj": 2},
        alpha_pattern={"down_proj": 40},
        modules_to_save=["o_proj"],
    ),
    "rslora": lambda: peft.LoraConfig(r=8, lora_alpha=8, use_rslora=True, target_modules=LLAMA),
    "dora": lambda: peft.LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=LLAMA),
    "ia3": lambda: peft.IA3Config(
        target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]
    ),
    "loha": lambda: peft.LoHaConfig(r=4, alpha=8, target_modules=["q_proj", "up_proj"]),
    "lokr": lambda: peft.LoKrConfig(r=4, alpha=8, target_modules=["q_proj", "up_proj"]),
    "adalora": lambda: peft.AdaLoraConfig(
        init_r=6, target_r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], total_step=10
    ),
    "vera": lambda: peft.VeraConfig(r=8, target_modules=["q_proj", "v_proj"]),
}


@pytest.fixture(autouse=True)
def small_row_blocks(monkeypatch):
    """Merge in blocks of a few rows (the last one partial) so every test here checks the
    block-by-block merge, not one block covering a whole tiny tensor."""
    monkeypatch.setattr(compose.deploy.merged, "BLOCK_ELEMENTS", 200)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_merged_matches_peft(method, llama_base, adapter, tmp_path):
    folder = adapter(method, llama_base, METHODS[method]())
    expected = peft_logits(llama_base, [folder])
    assert (expected - hf_logits(llama_base)).abs().max() > 1e-3  # the adapter changes outputs

    result = export_model([folder], llama_base, tmp_path / "merged", dtype="fp32")

    assert torch.allclose(hf_logits(result.path), expected, atol=2e-5)


def test_layout_config_tokenizer_and_card_follow_the_base(llama_base, adapter, tmp_path):
    folder = adapter("rslora", llama_base, METHODS["rslora"]())
    result = export_model([folder], llama_base, tmp_path / "out", base_label="models/tiny")

    base_files = {p.name for p in llama_base.iterdir()}
    shards = sorted(n for n in base_files if n.endswith(".safetensors"))
    assert len(shards) > 1
    assert sorted(f for f in result.files if f.endswith(".safetensors")) == shards
    index = json.loads((result.path / "model.safetensors.index.json").read_text())
    base_index = json.loads((llama_base / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == base_index["weight_map"]
    assert index["metadata"]["total_size"] == sum((result.path / s).stat().st_size for s in shards)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (result.path / name).read_bytes() == (llama_base / name).read_bytes()
    card = (result.path / "README.md").read_text()
    assert "base_model: models/tiny" in card
    assert f"1. `{folder}`" in card
    assert not result.untied
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left


@pytest.mark.numerics
def test_bf16_delta_in_fp32_rounded_once(llama_base, adapter, tmp_path, built):
    from tests.compose.deploy.models import make_base

    base = built("llama-bf16", lambda p: make_base(p, dtype=torch.bfloat16, tokenizer="bpe"))
    folder = adapter(
        "bf16-lora", base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])
    )
    result = export_model([folder], base, tmp_path / "out")

    name = "model.layers.0.self_attn.q_proj.weight"
    with safe_open(base / "model.safetensors", "pt") as fh:
        weight = fh.get_tensor(name)
        untouched = fh.get_tensor("model.layers.0.mlp.up_proj.weight")
    with safe_open(folder / "adapter_model.safetensors", "pt") as fh:
        prefix = "base_model.model.model.layers.0.self_attn.q_proj"
        a, b = fh.get_tensor(f"{prefix}.lora_A.weight"), fh.get_tensor(f"{prefix}.lora_B.weight")
    with safe_open(result.path / "model.safetensors", "pt") as fh:
        merged = fh.get_tensor(name)
        # A module the adapter does not touch is copied, not computed: the same bits.
        assert torch.equal(fh.get_tensor("model.layers.0.mlp.up_proj.weight"), untouched)
    assert merged.dtype == torch.bfloat16
    # The merge is W + 2 B A in fp32 (r = 4 products and two more roundings per value, in
    # whatever order the BLAS kernel picks), rounded once to bf16. Checked against the exact
    # value: equal where it is not within the fp32 error bound of a bf16 rounding boundary,
    # one of the two neighbours where it is. A second rounding (through bf16 B A, or W + delta
    # in bf16) would miss by a bf16 step on many values.
    exact = weight.double() + 2.0 * (b.double() @ a.double())
    error = gamma(a.shape[0] + 2) * (
        weight.double().abs() + 2.0 * (b.double().abs() @ a.double().abs())
    )
    straddling = assert_rounded_once(merged, exact, error)
    assert straddling < merged.numel() // 100  # the bound is tight: nearly every value is decided
    with pytest.raises(AssertionError, match="not the exact value rounded once"):
        delta = (2.0 * (b.float() @ a.float())).bfloat16()  # a delta rounded to bf16 first
        assert_rounded_once((weight.float() + delta.float()).bfloat16(), exact, error)
    expected = peft_logits(base, [folder])
    assert (hf_logits(result.path) - expected).abs().max() < 2e-2


def test_tied_embeddings_are_untied_when_the_adapter_touches_them(tied_base, adapter, tmp_path):
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "embed_tokens", "lm_head"]
    )
    folder = adapter("tied-embed-lora", tied_base, config)
    expected = peft_logits(tied_base, [folder])

    result = export_model([folder], tied_base, tmp_path / "out", dtype="fp32")

    assert result.untied
    assert json.loads((result.path / "config.json").read_text())["tie_word_embeddings"] is False
    tensors, _ = read_header(result.path / "model.safetensors")
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= set(tensors)
    assert torch.allclose(hf_logits(result.path), expected, atol=2e-5)


def test_tied_base_stays_tied_when_the_adapter_does_not_touch_embeddings(
    tied_base, adapter, tmp_path
):
    folder = adapter("tied-plain", tied_base, peft.LoraConfig(r=4, target_modules=["v_proj"]))
    result = export_model([folder], tied_base, tmp_path / "out", dtype="fp32")
    assert not result.untied
    assert "lm_head.weight" not in read_header(result.path / "model.safetensors")[0]
    assert torch.allclose(hf_logits(result.path), peft_logits(tied_base, [folder]), atol=2e-5)


def test_gpt2_conv1d_fan_in_fan_out_lora_and_dora(gpt2_base, adapter, tmp_path):
    lora = adapter(
        "gpt2-lora",
        gpt2_base,
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True),
    )
    dora = adapter(
        "gpt2-dora",
        gpt2_base,
        peft.LoraConfig(r=4, use_dora=True, target_modules=["c_proj"], fan_in_fan_out=True),
        seed=2,
    )
    for folder in (lora, dora):
        result = export_model([folder], gpt2_base, tmp_path / folder.name, dtype="fp32")
        assert torch.allclose(hf_logits(result.path), peft_logits(gpt2_base, [folder]), atol=2e-5)


def test_qwen2_ia3_scales_the_attention_biases(qwen2_base, adapter, tmp_path):
    config = peft.IA3Config(
        target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]
    )
    folder = adapter("qwen2-ia3", qwen2_base, config)
    result = export_model([folder], qwen2_base, tmp_path / "out", dtype="fp32")
    assert torch.allclose(hf_logits(result.path), peft_logits(qwen2_base, [folder]), atol=2e-5)


def test_a_stack_is_applied_in_order(llama_base, adapter, tmp_path):
    first = adapter("rslora", llama_base, METHODS["rslora"]())
    second = adapter("dora", llama_base, METHODS["dora"]())
    expected = peft_logits(llama_base, [first, second])  # first merged, then DoRA on top

    result = export_model([first, second], llama_base, tmp_path / "stack", dtype="fp32")

    assert torch.allclose(hf_logits(result.path), expected, atol=5e-5)
    card = (result.path / "README.md").read_text()
    assert card.index(f"1. `{first}`") < card.index(f"2. `{second}`")


def test_base_alone_is_copied_exactly(llama_base, tmp_path):
    result = export_model([], llama_base, tmp_path / "copy")
    base = BaseFolder.open(llama_base)
    for shard in base.shards:
        assert (result.path / shard).read_bytes() == (llama_base / shard).read_bytes()
    # Same bytes, so the same model: its logits agree to fp32 rounding (computed twice).
    torch.testing.assert_close(hf_logits(result.path, IDS), hf_logits(llama_base, IDS))


@pytest.mark.numerics
def test_a_dtype_change_streams_new_shards_rounded_once_from_fp32(llama_base, adapter, tmp_path):
    # Same dtype: the base's shards are copied and patched. Another dtype changes the layout,
    # so the shards are written from scratch; both must hold the same merged values.
    folder = adapter("rslora", llama_base, METHODS["rslora"]())
    exact = export_model([folder], llama_base, tmp_path / "fp32", dtype="fp32")
    rounded = export_model([folder], llama_base, tmp_path / "bf16", dtype="bf16")

    config = json.loads((folder / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"] ** 0.5  # rsLoRA
    with safe_open(folder / "adapter_model.safetensors", "pt") as fh:
        factors = {k: fh.get_tensor(k).double() for k in fh.keys()}  # noqa: SIM118
    merged = 0
    for shard in BaseFolder.open(llama_base).shards:
        with safe_open(exact.path / shard, "pt") as a, safe_open(rounded.path / shard, "pt") as b:
            names = sorted(a.keys())
            assert sorted(b.keys()) == names
            for name in names:
                assert b.get_tensor(name).dtype == torch.bfloat16
                fp32, bf16 = a.get_tensor(name), b.get_tensor(name)
                prefix = f"base_model.model.{name.removesuffix('.weight')}"
                if f"{prefix}.lora_A.weight" not in factors:
                    # Copied from the base, not computed: rounding the same fp32 value to
                    # bf16 gives the same bits everywhere.
                    assert torch.equal(bf16, fp32.bfloat16()), name
                    continue
                # Both exports compute W + s B A in fp32, each within the dot-product bound
                # of the exact value, so within twice that of each other; bf16 is rounded once.
                lora_a, lora_b = (
                    factors[f"{prefix}.lora_A.weight"],
                    factors[f"{prefix}.lora_B.weight"],
                )
                # |W| <= |W + s B A| + s |B| |A|, so this bounds gamma * (|W| + s |B| |A|).
                error = gamma(lora_a.shape[0] + 2) * (
                    fp32.double().abs() + 2 * scale * (lora_b.abs() @ lora_a.abs())
                )
                assert_rounded_once(bf16, fp32.double(), 2.01 * error)
                merged += 1
    assert merged == 2 * len(LLAMA)  # every adapted module of both layers was checked


def test_copies_fall_back_to_read_write_across_filesystems(
    llama_base, adapter, tmp_path, monkeypatch
):
    folder = adapter("rslora", llama_base, METHODS["rslora"]())
    expected = export_model([folder], llama_base, tmp_path / "kernel-side")

    def cross_device(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", cross_device)  # what Linux says across filesystems
    result = export_model([folder], llama_base, tmp_path / "fallback")

    for shard in BaseFolder.open(llama_base).shards:
        assert (result.path / shard).read_bytes() == (expected.path / shard).read_bytes()


def test_a_tied_base_is_copied_and_patched_when_the_embeddings_are_untouched(
    tied_base, adapter, tmp_path
):
    # A base whose headers are laid out in a way only a copy keeps (rewritten shards get
    # compact JSON headers).
    base = tmp_path / "base"
    shutil.copytree(tied_base, base)
    for shard in BaseFolder.open(base).shards:
        _indent_header(base / shard)
    folder = adapter("tied-plain", tied_base, peft.LoraConfig(r=4, target_modules=["v_proj"]))

    result = export_model([folder], base, tmp_path / "out")

    assert not result.untied
    for shard in BaseFolder.open(base).shards:
        base_bytes, out_bytes = (base / shard).read_bytes(), (result.path / shard).read_bytes()
        header = 8 + int.from_bytes(base_bytes[:8], "little")
        assert out_bytes[:header] == base_bytes[:header]
        assert out_bytes != base_bytes  # v_proj changed
    assert torch.allclose(hf_logits(result.path), peft_logits(tied_base, [folder]), atol=2e-5)


def _indent_header(path):
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + size]), indent=1).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header + data[8 + size :])


def test_rewritten_shards_keep_the_bases_metadata(llama_base, adapter, tmp_path):
    folder = adapter("rslora", llama_base, METHODS["rslora"]())
    base = tmp_path / "base"
    shutil.copytree(llama_base, base)
    from safetensors.torch import load_file, save_file

    for shard in BaseFolder.open(base).shards:
        save_file(load_file(base / shard), base / shard, {"format": "pt", "origin": "lab"})

    result = export_model([folder], base, tmp_path / "bf16", dtype="bf16")  # new layout

    for shard in BaseFolder.open(base).shards:
        assert read_header(result.path / shard)[1] == {"format": "pt", "origin": "lab"}
