"""``hub export --device``: the CPU merge is today's, the option's refusals, and the edits'
device-agnostic math, checked on a CPU (CI has no GPU; test_export_cuda.py runs the GPU)."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from compose.deploy import export_model, ggml_quants
from compose.deploy.adapters import load_adapter
from compose.deploy.base import BaseFolder
from compose.deploy.fp8 import quantize_fp8
from compose.deploy.merged import exact_fp32, make_plan, merged_blocks, merged_tensor
from compose.deploy.stio import read_tensor
from schemas.errors import InvalidArgument

LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
NO_CUDA = pytest.mark.skipif(
    torch.cuda.is_available(), reason="the default is cuda here: test_export_cuda.py compares"
)

# Every kind of edit a streamed merge applies (adapter key -> PEFT config).
EDIT_KINDS = {
    "lora-bias-mts": lambda: peft.LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["o_proj"]
    ),
    "dora": lambda: peft.LoraConfig(r=4, use_dora=True, target_modules=LLAMA),
    "ia3": lambda: peft.IA3Config(
        target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]
    ),
    "embedding-lora": lambda: peft.LoraConfig(r=4, target_modules=["embed_tokens", "q_proj"]),
    "tokens": lambda: peft.LoraConfig(
        r=4, target_modules=["q_proj"], trainable_token_indices=[3, 7, 11]
    ),
    "loha": lambda: peft.LoHaConfig(r=4, alpha=8, target_modules=["q_proj", "up_proj"]),
    "lokr": lambda: peft.LoKrConfig(r=4, alpha=8, target_modules=["q_proj", "up_proj"]),
    "adalora": lambda: peft.AdaLoraConfig(
        init_r=6, target_r=4, target_modules=["q_proj", "v_proj"], total_step=10
    ),
    "vera": lambda: peft.VeraConfig(r=8, target_modules=["q_proj", "v_proj"]),
}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="session")
def stack(llama_base, adapter):
    """A LoRA then a DoRA: every tensor they touch is merged, some by both."""
    return [
        adapter("dev-lora", llama_base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=LLAMA)),
        adapter("dev-dora", llama_base, EDIT_KINDS["dora"](), seed=2),
    ]


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")}


@NO_CUDA
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"dtype": "bf16"},
        {"format": "fp8"},
        pytest.param({"format": "gguf", "quant": "q8_0"}, id="gguf"),
    ],
    ids=str,
)
def test_device_cpu_is_the_default_byte_for_byte(options, stack, llama_base, tmp_path):
    if options.get("format") == "gguf":
        pytest.importorskip("gguf")
    # The same folder name: the model card's title is the folder's.
    default = export_model(stack, llama_base, tmp_path / "default" / "out", **options)
    on_cpu = export_model(stack, llama_base, tmp_path / "cpu" / "out", device="cpu", **options)

    assert default.details["device"] == on_cpu.details["device"] == "cpu"
    assert _files(on_cpu.path) == _files(default.path)


@NO_CUDA
def test_device_cuda_without_a_gpu_is_one_error_line(stack, llama_base, tmp_path, hub_home):
    out = tmp_path / "out"
    result = invoke(
        "export", *stack, "--base", llama_base, "-o", out, "--device", "cuda"
    )  # fmt: skip

    assert result.exit_code == 1
    assert result.output == "Error: --device cuda: no CUDA device is available (use --device cpu)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub-home"]  # no output, no staging


@NO_CUDA
def test_peft_merged_methods_refuse_cuda_without_a_gpu_too(adapters, base_dir, tmp_path):
    with pytest.raises(InvalidArgument) as refused:
        export_model([adapters("oft")], base_dir, tmp_path / "out", device="cuda")
    assert str(refused.value) == "--device cuda: no CUDA device is available (use --device cpu)"
    assert not list(tmp_path.iterdir())


def test_json_records_the_device(stack, llama_base, tmp_path, hub_home):
    result = invoke(
        "export", *stack, "--base", llama_base, "-o", tmp_path / "out", "--format", "fp8",
        "--device", "cpu", "--json",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    details = json.loads(result.output)["details"]
    assert details["device"] == "cpu"
    assert details["scheme"] == "FP8_DYNAMIC (W8A8, per-channel weights)"
    # The output says what it is, not where it was made: the card has no device.
    assert "device" not in (tmp_path / "out" / "README.md").read_text()


def test_peft_merged_methods_record_the_device(adapters, base_dir, tmp_path):
    result = export_model([adapters("oft")], base_dir, tmp_path / "out", device="cpu")
    assert result.details["device"] == "cpu"
    assert result.details["merge"].startswith("merged by PEFT's merge_and_unload")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("fmt", ["gguf-lora", "vllm-bundle"])
def test_a_device_is_refused_where_nothing_is_merged(fmt, device, stack, llama_base, tmp_path):
    with pytest.raises(InvalidArgument) as refused:
        export_model(stack[:1], llama_base, tmp_path / "out", format=fmt, device=device)
    assert str(refused.value) == (
        f"--device {device} does not apply to --format {fmt}: it merges nothing (the adapters"
        " are written as they are); --device applies to safetensors, gguf, fp8"
    )
    assert not list(tmp_path.iterdir())


def test_auto_is_the_default_where_nothing_is_merged_and_records_no_device(
    stack, llama_base, tmp_path
):
    result = export_model(
        stack[:1], llama_base, tmp_path / "out", format="vllm-bundle", device="auto"
    )
    assert "device" not in result.details


def test_an_unknown_device_names_the_choices(stack, llama_base, tmp_path):
    with pytest.raises(InvalidArgument) as refused:
        export_model(stack, llama_base, tmp_path / "out", device="tpu")
    assert str(refused.value) == "unknown --device 'tpu': choose one of auto, cpu, cuda"


@pytest.mark.parametrize("kind", sorted(EDIT_KINDS))
def test_every_edit_merges_whole_on_another_device(kind, llama_base, adapter):
    """Factors loaded onto the ``meta`` device: any CPU tensor left in an edit's math (an
    index, a constant) is refused there as it would be on a GPU, so this catches on a CPU
    what would break ``--device cuda``."""
    folder = adapter(f"dev-{kind}", llama_base, EDIT_KINDS[kind]())
    base = BaseFolder.open(llama_base)
    plan = make_plan(base, [load_adapter(folder, base, kind, device="meta")], "meta")
    touched = [name for name in plan.names if plan.edits.get(name)]
    assert touched
    for name in touched:
        data = read_tensor(plan.source(name))
        assert merged_blocks(plan, name, data) is None  # merged whole off the CPU
        merged = merged_tensor(plan, name, data)
        assert merged is not None
        assert (merged.device.type, merged.dtype, merged.shape) == (
            "meta",
            torch.float32,
            plan.shape(name),
        )


def test_quantizers_stay_on_the_device():
    weight = torch.empty((8, 64), device="meta")
    for kind in ("Q8_0", "Q4_0"):
        assert ggml_quants.quantize(weight, kind).device.type == "meta"
    q, scale = quantize_fp8(weight, torch.bfloat16)
    assert (q.device.type, scale.device.type) == ("meta", "meta")


def test_tf32_is_off_for_the_merge_and_restored_after():
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    try:
        matmul.allow_tf32 = True  # a caller's set_float32_matmul_precision("high")
        with exact_fp32("cuda"):
            assert matmul.allow_tf32 is False
        assert matmul.allow_tf32 is True
        with exact_fp32("cpu"):
            assert matmul.allow_tf32 is True  # nothing to change for a CPU merge
    finally:
        matmul.allow_tf32 = before
