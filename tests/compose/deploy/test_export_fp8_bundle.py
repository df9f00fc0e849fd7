"""FP8 (compressed-tensors) exports loaded by transformers, and vLLM multi-LoRA bundles."""

from __future__ import annotations

import json
import shlex

import peft
import pytest
import torch

import compose.deploy.merged
from compose.deploy import export_model
from compose.deploy.stio import read_header
from schemas.errors import IncompatibleAdapters
from tests.compose.deploy.models import hf_logits, peft_logits

LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_fp8_loads_in_transformers_and_matches_peft(llama_base, adapter, tmp_path, monkeypatch):
    pytest.importorskip("compressed_tensors")
    monkeypatch.setattr(compose.deploy.merged, "BLOCK_ELEMENTS", 200)  # merged in many blocks
    folder = adapter(
        "fp8-lora", llama_base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=LLAMA)
    )
    expected = peft_logits(llama_base, [folder])

    result = export_model([folder], llama_base, tmp_path / "fp8", format="fp8")

    config = json.loads((result.path / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert config["quantization_config"]["ignore"] == ["lm_head"]
    tensors = {}
    for shard in {p for p in result.files if p.endswith(".safetensors")}:
        tensors.update(read_header(result.path / shard)[0])
    q = tensors["model.layers.0.self_attn.q_proj.weight"]
    assert q.dtype == "F8_E4M3"
    assert tensors["model.layers.0.self_attn.q_proj.weight_scale"].shape == (q.shape[0], 1)
    for kept in ("lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"):
        assert tensors[kept].dtype == "BF16"
    index = json.loads((result.path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)

    # Each stored weight is the merged fp32 weight within fp8 rounding (half a step: 2^-4).
    from safetensors import safe_open

    merged = export_model([folder], llama_base, tmp_path / "fp32", dtype="fp32")
    name = "model.layers.0.self_attn.q_proj"
    shard = index["weight_map"][f"{name}.weight"]
    with safe_open(result.path / shard, "pt") as fh:
        weight = (
            fh.get_tensor(f"{name}.weight").float() * fh.get_tensor(f"{name}.weight_scale").float()
        )
        scale = fh.get_tensor(f"{name}.weight_scale").float()
    ref_index = json.loads((merged.path / "model.safetensors.index.json").read_text())
    with safe_open(merged.path / ref_index["weight_map"][f"{name}.weight"], "pt") as fh:
        exact = fh.get_tensor(f"{name}.weight")
    assert ((weight - exact).abs() <= exact.abs() / 16 + scale / 512 + 1e-6).all()

    got = hf_logits(result.path, dtype=torch.bfloat16)  # weights and activations in fp8
    effect = (expected - hf_logits(llama_base)).abs().max()
    assert (got - expected).abs().max() < 0.15 * effect
    assert torch.corrcoef(torch.stack([got.flatten(), expected.flatten()]))[0, 1] > 0.99


def test_vllm_bundle_manifest_command_and_folded_patterns(llama_base, adapter, tmp_path):
    plain = adapter(
        "bundle-plain", llama_base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    patterned = adapter(
        "bundle-patterns",
        llama_base,
        peft.LoraConfig(
            r=16,
            lora_alpha=16,
            target_modules=LLAMA,
            rank_pattern={"q_proj": 4},
            alpha_pattern={"v_proj": 64},
        ),
    )
    out = tmp_path / "bundle"
    result = export_model([plain, patterned], llama_base, out, format="vllm-bundle")

    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["max_lora_rank"] == 16
    assert [a["name"] for a in manifest["adapters"]] == [plain.name, patterned.name]
    assert manifest["adapters"][1]["rank"] == 16
    expected_command = [
        "vllm", "serve", str(llama_base.resolve()), "--enable-lora", "--max-lora-rank", "16",
        "--max-loras", "2", "--lora-modules",
        f"{plain.name}={out.resolve()}/adapters/{plain.name}",
        f"{patterned.name}={out.resolve()}/adapters/{patterned.name}",
    ]  # fmt: skip
    assert manifest["command"] == expected_command
    assert result.details["command"] == shlex.join(expected_command)
    assert (out / "serve.sh").stat().st_mode & 0o100
    # The copied adapter has one scale (vLLM's view) yet the same outputs under PEFT.
    copied = out / "adapters" / patterned.name
    copied_config = json.loads((copied / "adapter_config.json").read_text())
    assert copied_config["lora_alpha"] == copied_config["r"] == 16
    assert copied_config["alpha_pattern"] == copied_config["rank_pattern"] == {"q_proj": 4}
    assert torch.allclose(
        peft_logits(llama_base, [copied]), peft_logits(llama_base, [patterned]), atol=1e-5
    )


@pytest.mark.parametrize(
    ("key", "config", "message"),
    [
        (
            "dora",
            lambda: peft.LoraConfig(r=4, use_dora=True, target_modules=LLAMA),
            "dora on model.layers.0.mlp.down_proj is not served by vLLM's multi-LoRA",
        ),
        (
            "ia3",
            lambda: peft.IA3Config(target_modules=["k_proj"], feedforward_modules=[]),
            "vLLM serves LoRA adapters only, not ia3",
        ),
    ],
)
def test_vllm_bundle_refuses_what_vllm_cannot_serve(
    key, config, message, llama_base, adapter, tmp_path
):
    folder = adapter(f"bundle-bad-{key}", llama_base, config())
    with pytest.raises(IncompatibleAdapters) as info:
        export_model([folder], llama_base, tmp_path / "bundle", format="vllm-bundle")
    assert str(info.value) == (
        f"adapter {folder}: {message} (merge it with --format safetensors instead)"
    )
    assert not (tmp_path / "bundle").exists()
