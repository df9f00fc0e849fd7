"""``hub export --device cuda`` gives the CPU's export within "rounded once": the fp32 merged
values of both devices agree within the float bound of the computation, and the written
values differ by at most one step of the output dtype (where the fp32 values differ in
their last bits and straddle a rounding boundary). Untouched tensors are the same bytes.

CI has no GPU: these run where ``torch.cuda.is_available()`` and skip elsewhere; the CPU side
of every path has its own tests (test_export_device.py, test_export_safetensors.py...).
Standalone: ``python -m pytest tests/compose/deploy/test_export_cuda.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from cli.main import cli
from compose.deploy import deltas, export_model
from compose.deploy.adapters import load_adapter
from compose.deploy.base import BaseFolder
from compose.deploy.merged import exact_fp32, make_plan, merged_blocks, merged_tensor
from compose.deploy.stio import read_tensor
from tests.compose.deploy.models import make_base
from tests.numerics import gamma

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CONFIGS = {
    "lora": lambda: peft.LoraConfig(r=8, lora_alpha=16, target_modules=LLAMA),
    "dora": lambda: peft.LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=LLAMA),
    "ia3": lambda: peft.IA3Config(
        target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]
    ),
}
CASES = {"lora": ["lora"], "dora": ["dora"], "ia3": ["ia3"], "stack": ["lora", "dora"]}
"""Adapters merged in order; the stack is a LoRA then a DoRA on the same modules."""


@pytest.fixture(scope="session")
def fp32_base(built) -> Path:
    return built("cuda-llama", lambda p: make_base(p, hidden=128, shard="200KB", seed=7))


@pytest.fixture(scope="session")
def bf16_base(built) -> Path:
    return built(
        "cuda-llama-bf16",
        lambda p: make_base(p, hidden=128, shard="100KB", seed=8, dtype=torch.bfloat16),
    )


@pytest.fixture(scope="session")
def folders(fp32_base, adapter):
    """``folders(case)``: the case's adapter folders (trained on the fp32 base; the bf16 base
    has the same shapes)."""

    def get(case: str) -> list[Path]:
        return [
            adapter(f"cuda-{key}", fp32_base, CONFIGS[key](), seed=i + 1)
            for i, key in enumerate(CASES[case])
        ]

    return get


def bound(merged: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """How far apart two fp32 merges (any summation order, FMA or not) may be, per element:
    twice the error bound of a product of the row's length, relative to the row's largest
    magnitude (DoRA's norm runs over the row, LoRA's product over a shorter rank). TF32
    (10-bit products) would be about 2^-11 relative: well outside."""
    width = merged.shape[-1] if merged.ndim > 1 else 1
    scale = torch.maximum(merged.abs(), base.abs())
    if merged.ndim > 1:
        scale = scale.amax(dim=-1, keepdim=True)
    return 4 * gamma(width + 16) * scale


def ordered(values: torch.Tensor) -> torch.Tensor:
    """Floats as integers in the same order, neighbouring floats one apart (+0 and -0 equal)."""
    bits = {1: torch.int8, 2: torch.int16, 4: torch.int32}[values.element_size()]
    raw = values.contiguous().view(bits).long()
    sign = 1 << (8 * values.element_size() - 1)
    return torch.where(raw < 0, -(raw + sign), raw)


def assert_one_step(
    gpu: torch.Tensor, cpu: torch.Tensor, name: str, slack: torch.Tensor | None = None
) -> None:
    """The same values but for a few one step of their dtype apart. With ``slack`` (the fp32
    merges' bound per element), values no further apart than it pass whatever their steps:
    where a row's delta cancels its base to near zero, the rounded dtype's steps there are far
    finer than two fp32 merges of that row may differ by."""
    assert gpu.dtype == cpu.dtype and gpu.shape == cpu.shape, name
    steps = (ordered(gpu) - ordered(cpu)).abs()
    if slack is not None:
        steps = torch.where((gpu.float() - cpu.float()).abs() <= slack, 0, steps)
    assert int(steps.max()) <= 1, f"{name}: {int(steps.max())} steps apart"
    assert float((steps > 0).float().mean()) <= 0.02, f"{name}: too many values differ"


def cpu_merge(plan, name: str, data: torch.Tensor) -> torch.Tensor:
    """The CPU export's fp32 merge of one tensor: row blocks where it uses them."""
    blocks = merged_blocks(plan, name, data)
    if blocks is None:
        merged = merged_tensor(plan, name, data)
        assert merged is not None
        return merged
    out = torch.empty(data.shape, dtype=torch.float32)
    for rows, block in blocks:
        out[rows] = block
    return out


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def export_both(folders_, base, tmp_path, **options):
    """The same export on the CPU and on the GPU (same folder name: the card's title)."""
    cpu = export_model(folders_, base, tmp_path / "cpu" / "out", device="cpu", **options)
    gpu = export_model(folders_, base, tmp_path / "gpu" / "out", device="cuda", **options)
    assert (cpu.details["device"], gpu.details["device"]) == ("cpu", "cuda")
    assert gpu.files == cpu.files
    for file in cpu.files:
        if not file.endswith((".safetensors", ".gguf")):  # config, index, card, tokenizer
            assert (gpu.path / file).read_bytes() == (cpu.path / file).read_bytes(), file
    return cpu, gpu


@pytest.mark.parametrize("case", sorted(CASES))
def test_fp32_merges_agree_within_the_float_bound(case, folders, fp32_base):
    base = BaseFolder.open(fp32_base)
    plans = {
        device: make_plan(
            base, [load_adapter(f, base, device=device) for f in folders(case)], device
        )
        for device in ("cpu", "cuda")
    }
    touched = [name for name in plans["cpu"].names if plans["cpu"].edits.get(name)]
    assert touched
    with exact_fp32("cuda"):
        for name in touched:
            data = read_tensor(plans["cpu"].source(name))
            on_cpu = cpu_merge(plans["cpu"], name, data)
            on_gpu = merged_tensor(plans["cuda"], name, data)
            assert on_gpu is not None and on_gpu.device.type == "cuda"
            assert float((on_cpu - data).abs().max()) > 1e-3, name  # the adapter changes it
            difference = (on_gpu.cpu() - on_cpu).abs()
            assert bool((difference <= bound(on_cpu, data)).all()), (name, difference.max())
            if case == "ia3":  # products of two floats, correctly rounded on both devices
                assert torch.equal(on_gpu.cpu(), on_cpu), name


@pytest.mark.parametrize(
    ("base_dtype", "dtype"), [("fp32", None), ("fp32", "bf16"), ("bf16", None)]
)
@pytest.mark.parametrize("case", sorted(CASES))
def test_safetensors_on_the_gpu_are_the_cpus_rounded_once(
    case, base_dtype, dtype, folders, fp32_base, bf16_base, tmp_path
):
    base = fp32_base if base_dtype == "fp32" else bf16_base
    check_safetensors(folders(case), base, tmp_path, dtype)


def check_safetensors(adapters: list[Path], base: Path, tmp_path: Path, dtype: str | None) -> None:
    """Export on both devices; untouched tensors equal, merged ones within the bound (fp32)
    or one step (bf16)."""
    cpu, gpu = export_both(adapters, base, tmp_path, dtype=dtype)
    originals = tensors(base)
    touched = {e.target for f in adapters for e in load_adapter(f, BaseFolder.open(base)).edits}
    on_cpu, on_gpu = tensors(cpu.path), tensors(gpu.path)
    assert sorted(on_gpu) == sorted(on_cpu)
    for name, value in on_cpu.items():
        if name not in touched:
            assert torch.equal(on_gpu[name], value), name  # copied or converted on the CPU
        elif value.dtype == torch.float32:
            original = originals[name].float()
            within = (on_gpu[name] - value).abs() <= bound(value, original)
            assert bool(within.all()), name
        else:
            slack = bound(value.float(), originals[name].float())
            assert_one_step(on_gpu[name], value, name, slack)


@pytest.mark.parametrize("case", ["stack", "ia3"])  # ia3 leaves q, o, gate and up untouched
def test_fp8_on_the_gpu_is_the_cpus_within_one_step(case, folders, fp32_base, tmp_path):
    cpu, gpu = export_both(folders(case), fp32_base, tmp_path, format="fp8")

    touched = {
        e.target for f in folders(case) for e in load_adapter(f, BaseFolder.open(fp32_base)).edits
    }
    on_cpu, on_gpu = tensors(cpu.path), tensors(gpu.path)
    assert sorted(on_gpu) == sorted(on_cpu)
    quantized = [n for n, v in on_cpu.items() if v.dtype == torch.float8_e4m3fn]
    assert quantized
    scales = {n for n in on_cpu if n.endswith("_scale")}
    for name, value in on_cpu.items():
        weight = name.removesuffix("_scale")
        if weight in touched or name in quantized or name in scales:
            # fp8 values and their bf16 scales. Untouched linear weights are quantized on the
            # GPU too, and even they may land one step apart: the two devices' division
            # kernels by the per-row scale (measured on an H200: a few values of q_proj).
            assert_one_step(on_gpu[name], value, name)
        else:
            assert torch.equal(on_gpu[name], value), name  # copied: norms, embeddings


def test_gguf_on_the_gpu_is_the_cpus_within_one_step(llama_base, adapter, tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    folder = adapter("cuda-gguf-lora", llama_base, CONFIGS["lora"]())
    touched = {e.target for e in load_adapter(folder, BaseFolder.open(llama_base)).edits}
    for quant in ("f16", "q8_0"):
        cpu, gpu = export_both([folder], llama_base, tmp_path / quant, format="gguf", quant=quant)
        files = [f"model-{quant}.gguf"]
        assert cpu.details["gguf"] == files[0]
        readers = [gguf.GGUFReader(result.path / files[0]) for result in (cpu, gpu)]
        pairs = zip(readers[0].tensors, readers[1].tensors, strict=True)
        changed = 0
        for ours, theirs in pairs:
            assert (ours.name, ours.tensor_type) == (theirs.name, theirs.tensor_type)
            a, b = np.asarray(ours.data), np.asarray(theirs.data)
            if np.array_equal(a, b):
                continue
            changed += 1
            if ours.tensor_type == gguf.GGMLQuantizationType.Q8_0:
                blocks_a, blocks_b = a.reshape(-1, 34), b.reshape(-1, 34)
                scales = [torch.from_numpy(x[:, :2].copy()).view(torch.float16)
                          for x in (blocks_a, blocks_b)]  # fmt: skip
                assert_one_step(scales[1], scales[0], ours.name)
                quants = [torch.from_numpy(x[:, 2:].copy()).view(torch.int8)
                          for x in (blocks_a, blocks_b)]  # fmt: skip
                assert int((quants[1].long() - quants[0].long()).abs().max()) <= 1, ours.name
            else:
                assert a.dtype == np.float16, ours.name
                assert_one_step(torch.from_numpy(b.copy()), torch.from_numpy(a.copy()), ours.name)
        assert changed <= len(touched)  # at most the merged ones: the rest is encoded alike


def test_peft_merged_methods_on_the_gpu(adapters, base_dir, tmp_path):
    cpu, gpu = export_both([adapters("oft")], base_dir, tmp_path, dtype="fp32")

    on_cpu, on_gpu = tensors(cpu.path), tensors(gpu.path)
    assert sorted(on_gpu) == sorted(on_cpu)
    for name, value in on_cpu.items():
        # OFT's rotation is a Cayley transform (a solve) before the product: a few products'
        # bounds, relative to the tensor's largest value.
        limit = 64 * gamma(value.shape[-1]) * float(value.abs().max())
        assert float((on_gpu[name] - value).abs().max()) <= limit, name


def test_tf32_turned_on_by_the_caller_is_off_for_the_merge(folders, fp32_base, tmp_path):
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    try:
        matmul.allow_tf32 = True  # e.g. torch.set_float32_matmul_precision("high")
        check_safetensors(folders("lora"), fp32_base, tmp_path, None)
        assert matmul.allow_tf32 is True  # restored
    finally:
        matmul.allow_tf32 = before


def test_the_bound_is_tight_enough_to_see_tf32():
    """Control: the same LoRA product with TF32 on is outside ``bound`` (so the tests above
    would see a merge that used it), with it off inside."""
    generator = torch.Generator().manual_seed(0)  # the shapes of the tests' down_proj
    weight = 0.02 * torch.randn(128, 256, generator=generator)
    b = 0.05 * torch.randn(128, 8, generator=generator)
    a = 0.1 * torch.randn(8, 256, generator=generator)
    exact = deltas.add_lora_(weight.double(), a.double(), b.double(), 2.0).float()
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    try:
        results = {}
        for tf32 in (False, True):
            matmul.allow_tf32 = tf32
            results[tf32] = deltas.add_lora_(weight.cuda(), a.cuda(), b.cuda(), 2.0).cpu()
    finally:
        matmul.allow_tf32 = before
    assert bool(((results[False] - exact).abs() <= bound(exact, weight)).all())
    assert not bool(((results[True] - exact).abs() <= bound(exact, weight)).all())


def test_cli_auto_is_cuda_here_and_json_says_so(folders, fp32_base, tmp_path, hub_home):
    for device, args in (
        ("cuda", []),
        ("cuda", ["--device", "auto"]),
        ("cpu", ["--device", "cpu"]),
    ):
        out = tmp_path / f"out-{device}-{len(args)}"
        result = CliRunner().invoke(
            cli,
            ["export", *map(str, folders("lora")), "--base", str(fp32_base), "-o", str(out),
             "--json", *args],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["details"]["device"] == device
