"""Our torch GGML quantizers against the gguf package's (bit-exact with ggml's reference).

Bit equality is the property here, not an accident of one CPU: Q8_0/Q4_0 take a block's
maximum (exact), a division, then per value a multiply and an add in separate kernels (each
correctly rounded by IEEE 754 on every CPU, as in numpy), and round half away from zero; no
sum whose order a kernel could pick. `make test` also runs these under
ATEN_CPU_CAPABILITY=default.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compose.deploy import ggml_quants

KINDS = ["Q8_0", "Q4_0"]

pytestmark = pytest.mark.numerics


def reference(weight: torch.Tensor, kind: str) -> np.ndarray:
    return gguf.quants.quantize(weight.numpy(), gguf.GGMLQuantizationType[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_matches_gguf_byte_for_byte_on_a_weight_with_edge_cases(kind, monkeypatch):
    torch.manual_seed(0)
    weight = torch.randn(67, 256) * 0.05
    weight[3] = 0.0  # all-zero blocks: scale 0
    weight[5, :32] = torch.tensor([1.0, -1.0] * 16)  # equal maxima of both signs
    weight[7, :32] = torch.cat([torch.tensor([127.0]), torch.arange(31) - 15.5])  # d = 1: ties
    weight[9] *= 1e-6  # tiny scales (f16 subnormals)
    weight[11, :32] = 0.0
    weight[11, :2] = torch.tensor([1e-39, -5e-40])  # 1/d overflows to inf
    monkeypatch.setattr(ggml_quants, "ROWS_ELEMENTS", 1000)  # several steps, the last partial

    ours = ggml_quants.quantize(weight, kind)

    assert ours.shape == (67, 8 * ggml_quants.TYPE_SIZES[kind])
    np.testing.assert_array_equal(ours.numpy(), reference(weight, kind))


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 5),
    blocks=st.integers(1, 4),
    seed=st.integers(0, 2**31),
    scale=st.sampled_from([1e-4, 1.0, 300.0]),
)
def test_matches_gguf_on_random_weights(kind, rows, blocks, seed, scale):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, 32 * blocks, generator=generator) * scale
    np.testing.assert_array_equal(
        ggml_quants.quantize(weight, kind).numpy(), reference(weight, kind)
    )


def test_rows_that_are_not_whole_blocks_are_refused():
    with pytest.raises(ValueError, match="rows of 40 are not whole blocks of 32"):
        ggml_quants.quantize(torch.zeros(2, 40), "Q8_0")


def test_roundf_is_halves_away_from_zero_at_and_beside_every_half():
    halves = np.arange(-128, 128, dtype=np.float32) + np.float32(0.5)
    values = np.concatenate(
        [halves, np.nextafter(halves, np.float32(-1e9)), np.nextafter(halves, np.float32(1e9))]
    )
    values = np.concatenate([values, -values, np.float32([0.0, -0.0, 1e-30, 0.49999997])])
    ours = ggml_quants._roundf(torch.from_numpy(values.copy())).numpy()
    np.testing.assert_array_equal(ours, gguf.quants.np_roundf(values))
