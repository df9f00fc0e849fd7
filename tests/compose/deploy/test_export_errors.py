"""Bad input: a clear one-line error naming the culprit, and no output left behind."""

from __future__ import annotations

import shutil

import peft
import pytest

import compose.deploy.merged
import compose.deploy.output
from compose.deploy import export_model
from compose.deploy.base import BaseFolder
from schemas.errors import (
    IncompatibleAdapters,
    InsufficientDiskSpace,
    InvalidArgument,
    OutputExists,
)
from tests.compose.deploy.models import make_base


@pytest.fixture(scope="session")
def q_lora(llama_base, adapter):
    return adapter("q-lora", llama_base, peft.LoraConfig(r=4, target_modules=["q_proj"]))


def _nothing_left(tmp_path, keep=()):
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_base_with_other_shapes_is_refused(q_lora, built, tmp_path):
    small = built("llama-32", lambda p: make_base(p, hidden=32, tokenizer="bpe"))
    with pytest.raises(IncompatibleAdapters) as info:
        export_model([q_lora], small, tmp_path / "out")
    assert str(info.value) == (
        f"adapter {q_lora}: module model.layers.0.self_attn.q_proj changes a [64, 64] weight"
        " but the base's is [32, 32] (the base does not match the adapter)"
    )
    assert info.value.module == "model.layers.0.self_attn.q_proj"
    _nothing_left(tmp_path)


def test_base_of_another_architecture_is_refused(q_lora, gpt2_base, tmp_path):
    with pytest.raises(IncompatibleAdapters) as info:
        export_model([q_lora], gpt2_base, tmp_path / "out")
    assert str(info.value) == (
        f"adapter {q_lora} was trained on a LlamaForCausalLM, but the base {gpt2_base} is a"
        " GPT2LMHeadModel (give the base model the adapter was trained on)"
    )
    _nothing_left(tmp_path)


def test_gguf_lists_the_supported_architectures(gpt2_base, tmp_path):
    with pytest.raises(InvalidArgument) as info:
        export_model([], gpt2_base, tmp_path / "out", format="gguf")
    assert str(info.value) == (
        "GGUF export supports LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM; the base"
        f" {gpt2_base} is a GPT2LMHeadModel (export --format safetensors instead)"
    )


def test_prompt_learning_adapters_cannot_be_merged(llama_base, adapter, tmp_path):
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    folder = adapter("prompt", llama_base, config)
    with pytest.raises(IncompatibleAdapters, match="method prompt_tuning cannot be merged"):
        export_model([folder], llama_base, tmp_path / "out")


def test_existing_output_is_refused_unless_forced(q_lora, llama_base, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExists) as info:
        export_model([q_lora], llama_base, out)
    assert (
        str(info.value) == f"{out} already exists (choose another -o or pass --force to replace it)"
    )
    assert (out / "keep.txt").read_text() == "mine"

    export_model([q_lora], llama_base, out, force=True)
    assert not (out / "keep.txt").exists()
    assert (out / "config.json").is_file()
    _nothing_left(tmp_path, ["out"])


def test_a_failure_midway_leaves_nothing(q_lora, llama_base, tmp_path, monkeypatch):
    real = compose.deploy.merged.merged_rounded
    calls = []

    def failing(plan, name, target, data=None):
        calls.append(name)
        if len(calls) == 2:  # the second changed tensor: the first is already written
            raise RuntimeError("disk on fire")
        return real(plan, name, target, data)

    monkeypatch.setattr(compose.deploy.merged, "merged_rounded", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export_model([q_lora], llama_base, tmp_path / "out")
    _nothing_left(tmp_path)


def test_not_enough_disk_space_is_detected_up_front(q_lora, llama_base, tmp_path, monkeypatch):
    class Usage:
        free = 10 * 2**20

    monkeypatch.setattr(compose.deploy.output.shutil, "disk_usage", lambda _: Usage)
    with pytest.raises(InsufficientDiskSpace, match=r"needs about .* MiB, 10\.0 MiB is free on"):
        export_model([q_lora], llama_base, tmp_path / "out")
    _nothing_left(tmp_path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"format": "onnx"}, "unknown --format 'onnx': choose one of safetensors, gguf,"),
        ({"quant": "q8_0"}, "--quant applies to --format gguf, not safetensors"),
        ({"format": "gguf", "dtype": "bf16"}, "--dtype does not apply to --format gguf"),
        ({"format": "gguf", "quant": "q3_0"}, "unknown --quant 'q3_0' for gguf: choose one of"),
        ({"format": "gguf-lora"}, "--format gguf-lora needs at least one adapter"),
    ],
)
def test_bad_options(options, message, llama_base, tmp_path):
    with pytest.raises(InvalidArgument) as info:
        export_model([], llama_base, tmp_path / "out", **options)
    assert str(info.value).startswith(message)


def test_a_truncated_base_shard_is_refused_up_front(q_lora, llama_base, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(llama_base, base)
    shard = base / BaseFolder.open(base).shards[-1]
    size = shard.stat().st_size
    with open(shard, "r+b") as fh:
        fh.truncate(size - 100)

    with pytest.raises(InvalidArgument) as info:
        export_model([q_lora], base, tmp_path / "out")

    assert str(info.value) == (
        f"base {shard}: truncated: its header says {size} bytes, the file has {size - 100}"
    )
    _nothing_left(tmp_path, keep=["base"])
