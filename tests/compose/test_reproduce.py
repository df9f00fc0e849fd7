"""The rebuild comparison (compose.reproduce): the bound, the low-rank delta norm, and that it
compares what an adapter does, not how its factors happen to be signed."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from compose.reproduce import (
    BOUND_FACTOR,
    check_tensors,
    compare_folders,
    delta_difference,
    unit_roundoff,
)

pytestmark = pytest.mark.numerics

KEY = "base_model.model.model.layers.0.self_attn.q_proj"


def _lora(seed: int, d: int = 48, k: int = 40, r: int = 6) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        f"{KEY}.lora_A.weight": torch.randn(r, k, generator=generator, dtype=torch.float64).float(),
        f"{KEY}.lora_B.weight": torch.randn(d, r, generator=generator, dtype=torch.float64).float(),
    }


def test_unit_roundoff_of_each_stored_dtype():
    assert unit_roundoff(torch.float32) == 2.0**-24
    assert unit_roundoff(torch.float16) == 2.0**-11
    assert unit_roundoff(torch.bfloat16) == 2.0**-8
    assert unit_roundoff(torch.int64) == 0.0


def test_low_rank_delta_difference_is_the_dense_one():
    one, two = _lora(1), _lora(2)
    a1, b1 = one[f"{KEY}.lora_A.weight"], one[f"{KEY}.lora_B.weight"]
    a2, b2 = two[f"{KEY}.lora_A.weight"], two[f"{KEY}.lora_B.weight"]
    dense = torch.linalg.matrix_norm(b1.double() @ a1.double() - b2.double() @ a2.double())
    assert delta_difference(a1, b1, a2, b2) == pytest.approx(float(dense), rel=1e-12)
    assert delta_difference(a1, b1, a1, b1) == 0.0


def test_factors_with_flipped_singular_vector_signs_are_the_same_adapter():
    # Another LAPACK path may return (-u_i, -v_i) for a singular pair: other bytes in A and B,
    # the same delta B A, so the same adapter.
    stored = _lora(3)
    flipped = {k: v.clone() for k, v in stored.items()}
    flipped[f"{KEY}.lora_A.weight"][2] *= -1
    flipped[f"{KEY}.lora_B.weight"][:, 2] *= -1
    (check,) = check_tensors(stored, flipped)
    assert check.name == "model.layers.0.self_attn.q_proj (B·A)"
    assert check.relative < 1e-14 and check.ok  # zero but for the fp64 QR's rounding
    # One-sided, the sign flip changes the delta: far beyond the bound.
    flipped[f"{KEY}.lora_A.weight"][2] *= -1
    (check,) = check_tensors(stored, flipped)
    assert not check.ok and check.relative > 0.1


def test_the_bound_is_rounding_each_factor_once():
    stored = _lora(4)
    a, b = stored[f"{KEY}.lora_A.weight"], stored[f"{KEY}.lora_B.weight"]
    (check,) = check_tensors(stored, stored)
    norms = float(torch.linalg.vector_norm(a.double()) * torch.linalg.vector_norm(b.double()))
    assert check.bound == pytest.approx(BOUND_FACTOR * 2.0**-24 * norms, rel=1e-12)
    assert check.norm == pytest.approx(float(torch.linalg.matrix_norm(b.double() @ a.double())))

    # Every value one fp32 step away (what another kernel's last-bit rounding can do): inside.
    nudged = {k: torch.nextafter(v, torch.full_like(v, float("inf"))) for k, v in stored.items()}
    (check,) = check_tensors(stored, nudged)
    assert 0 < check.bound_fraction < 0.5
    # A change no rounding explains (1e-5 relative on B): outside.
    scaled = {**stored, f"{KEY}.lora_B.weight": b * (1 + 1e-5)}
    (check,) = check_tensors(stored, scaled)
    assert not check.ok and check.relative == pytest.approx(1e-5, rel=1e-2)


def test_other_tensors_compare_value_by_value():
    stored = {"base_model.model.layers.0.mlp.down_proj.ia3_l": torch.linspace(0.5, 1.5, 64)}
    up = {k: torch.nextafter(v, torch.full_like(v, 2.0)) for k, v in stored.items()}
    (check,) = check_tensors(stored, up)
    assert check.ok and check.bound == pytest.approx(
        BOUND_FACTOR * 2.0**-24 * float(torch.linalg.vector_norm(stored[next(iter(stored))]))
    )
    bf16 = {k: v.bfloat16() for k, v in stored.items()}
    (check,) = check_tensors(bf16, {k: v.bfloat16() for k, v in up.items()})
    assert check.ok  # the same bound, in bf16's unit roundoff


def test_folders_report_each_file(tmp_path):
    stored, rebuilt = tmp_path / "stored", tmp_path / "rebuilt"
    for folder in (stored, rebuilt):
        folder.mkdir()
        (folder / "adapter_config.json").write_text('{"r": 6}\n')
    (stored / "README.md").write_text("stored\n")
    (rebuilt / "README.md").write_text("rebuilt\n")
    (rebuilt / "extra.txt").write_text("x")
    tensors = _lora(5)
    save_file(tensors, str(stored / "adapter_model.safetensors"))
    nudged = {k: torch.nextafter(v, torch.zeros_like(v)) for k, v in tensors.items()}
    save_file(nudged, str(rebuilt / "adapter_model.safetensors"))

    checks = {c.path: c for c in compare_folders(stored, rebuilt)}

    assert {p: c.status for p, c in checks.items()} == {
        "README.md": "differs",
        "adapter_config.json": "identical",
        "adapter_model.safetensors": "within_bound",
        "extra.txt": "extra",
    }
    assert checks["README.md"].reason == "bytes differ"
    weights = checks["adapter_model.safetensors"]
    assert weights.tensors_checked == 1 and 0 < weights.max_bound_fraction < 1

    save_file(
        {k: v.bfloat16() for k, v in nudged.items()}, str(rebuilt / "adapter_model.safetensors")
    )
    (weights,) = (c for c in compare_folders(stored, rebuilt) if c.path.endswith(".safetensors"))
    assert weights.status == "differs"
    assert weights.reason == (
        f"tensor '{KEY}.lora_A.weight' is torch.float32 (6, 40) stored but torch.bfloat16"
        " (6, 40) rebuilt"
    )
