"""The search's fast path for the exact weighted sum: every input's factors stacked once and only
reweighted per candidate (``CandidateModel.stack`` / ``set_weights``) scores what the merged LoRA
(``merge_modules``, ``CandidateModel.set``) scores, plain weights and per layer group alike,
with inputs of different ranks and module sets."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from compose.adapter_io import load_adapter
from compose.layer_groups import ModuleWeights
from compose.operators import merge_modules
from compose.search import CandidateModel
from tests.factories import make_adapter

IDS = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29], [2, 4, 8, 16, 32, 64, 3, 7]])
CASES = [
    {"weights": [0.7, -0.4]},
    {"weights": [0.0, 1.3]},
    {"weights": [1.5, 1.5]},
    # lm_head (no layer index) takes the last group's weights.
    {
        "layer_groups": [
            {"layers": [0], "weights": [0.7, -0.4]},
            {"layers": [1], "weights": [0.2, 1.1]},
        ]
    },
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, base_dir):
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("stacked")
    a_targets, b_targets = ["q_proj", "v_proj", "lm_head"], ["q_proj", "k_proj"]
    folders = [
        make_adapter("lora", root / "a", base_dir, seed=31, target_modules=a_targets),
        make_adapter(
            "lora", root / "b", base_dir, seed=32, r=4, lora_alpha=4, target_modules=b_targets
        ),
    ]
    adapters = [load_adapter(f, f.name, "lora", "linear") for f in folders]
    inputs = [SimpleNamespace(card=SimpleNamespace(rank=8)) for _ in folders]
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    return model, adapters, inputs


@torch.no_grad()
@pytest.mark.parametrize("params", CASES, ids=["plain", "zero", "bounds", "groups"])
def test_stacked_inputs_score_the_merged_lora(setup, params):
    model, adapters, inputs = setup
    modules = sorted({m for a in adapters for m in a.modules})
    merged, _ = merge_modules(adapters, inputs, "linear", params)  # type: ignore[arg-type]
    with CandidateModel(model, modules) as candidate:
        candidate.set(merged)
        expected = candidate.model(input_ids=IDS).logits
        candidate.stack(adapters)
        candidate.set_weights(ModuleWeights(params))
        got = candidate.model(input_ids=IDS).logits
        # set() replaces the stacked weights again: the merged LoRA's logits (the same
        # forward again; within fp32 rounding, since a BLAS may round a repeat by alignment).
        candidate.set(merged)
        again = candidate.model(input_ids=IDS).logits
        assert float((again - expected).abs().max()) <= 1e-6 * float(expected.abs().max())
    base = model(input_ids=IDS).logits
    assert not torch.allclose(expected, base, atol=1e-3)  # the adapters change the outputs
    # Two fp32 evaluations of one delta, rounded in a different order.
    scale = float(expected.abs().max())
    assert float((got - expected).abs().max()) <= 1e-5 * scale


@torch.no_grad()
def test_zero_weights_are_the_base_and_closing_detaches(setup):
    model, adapters, _ = setup
    modules = sorted({m for a in adapters for m in a.modules})
    base = model(input_ids=IDS).logits
    bound = 1e-6 * float(base.abs().max())  # the same forward, rounded again (fp32)
    with CandidateModel(model, modules) as candidate:
        candidate.stack(adapters)
        candidate.set_weights(lambda module: [0.0, 0.0])
        assert float((candidate.model(input_ids=IDS).logits - base).abs().max()) <= bound
        candidate.set_weights(lambda module: [1.0, 1.0])
        assert not torch.allclose(candidate.model(input_ids=IDS).logits, base, atol=1e-3)
    assert float((model(input_ids=IDS).logits - base).abs().max()) <= bound
