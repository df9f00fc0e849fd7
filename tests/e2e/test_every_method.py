"""For every PEFT method: save a real adapter, push, check the card, pull, load with PEFT."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from tests.factories import METHODS, peft_logits

EXPECTED = {
    # method key: (card method, variant, rank)
    "lora": ("lora", None, 8),
    "dora": ("lora", "dora", 4),
    "rslora": ("lora", "rslora", 8),
    "adalora": ("adalora", None, None),  # effective rank: checked below
    "ia3": ("ia3", None, None),
    "loha": ("loha", None, 4),
    "lokr": ("lokr", None, 4),
    "oft": ("oft", None, None),
    "boft": ("boft", None, None),
    "vera": ("vera", None, 8),
    "prompt_tuning": ("prompt_tuning", None, 5),
    "prefix_tuning": ("prefix_tuning", None, 5),
    "p_tuning": ("p_tuning", None, 5),
}


def _numel(folder):
    total = 0
    with safe_open(folder / "adapter_model.safetensors", "pt") as fh:
        for key in fh.keys():  # noqa: SIM118 (safe_open is not a dict)
            if key.endswith(("vera_A", "vera_B")):
                continue  # VeRA's shared frozen projections are not trained parameters
            shape = fh.get_slice(key).get_shape()
            total += int(torch.tensor(shape).prod().item()) if shape else 1
    return total


@pytest.mark.parametrize("method", sorted(METHODS))
def test_push_card_pull_load(method, registry, adapters, base_dir, tmp_path):
    folder = adapters(method)
    card = registry.push(folder, name=f"e2e/{method.replace('_', '-')}", tasks=["demo"]).card

    expected_method, expected_variant, expected_rank = EXPECTED[method]
    assert card.method == expected_method
    assert card.variant == expected_variant
    if expected_rank is not None:
        assert card.rank == expected_rank
    assert card.params_trainable == _numel(folder)
    assert card.base_model == str(base_dir)
    assert card.task_type == "CAUSAL_LM"
    if card.method in {"prompt_tuning", "prefix_tuning", "p_tuning"}:
        assert card.target_modules == []
        assert card.inference_overhead.extra_tokens == 5
        assert not card.inference_overhead.none_when_merged
    else:
        assert card.target_modules
        assert card.inference_overhead.none_when_merged

    pulled = registry.pull(card.ref, tmp_path / "pulled")
    for entry in card.files:
        assert (pulled / entry.path).read_bytes() == (folder / entry.path).read_bytes()

    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    expected = peft_logits(base_dir, folder, ids)
    got = peft_logits(base_dir, pulled, ids)
    # The files are the same bytes (above); the two forward passes agree to fp32 rounding.
    torch.testing.assert_close(got, expected)
