"""AdaLoRA pruned by PEFT's own rank allocator during training (``update_and_allocate``), as a
user gets it: the card's ranks are the triplets PEFT kept, and the merged export gives the
fp32 PeftModel's logits (it was scaled by init_r / kept rank before: issue 9)."""

from __future__ import annotations

import torch

from tests.e2e.fidelity import EXPORT_TOL, MIN_EFFECT, hf_logits, load_peft, peft_logits
from tests.factories import make_pruned_adalora


def test_allocator_pruned_adalora_card_and_export(registry, base_dir, tmp_path):
    folder = make_pruned_adalora(tmp_path / "pruned", base_dir)
    card = registry.push(folder, name="t/adalora").card

    model = load_peft(base_dir, folder)
    kept = {
        name.removeprefix("base_model.model.").removesuffix(".lora_E.default"): int(
            (param != 0).sum()
        )
        for name, param in model.named_parameters()
        if ".lora_E." in name
    }
    assert card.details["module_ranks"] == kept
    assert card.rank == max(kept.values())
    assert min(kept.values()) < card.details["init_r"]  # the allocator did prune

    out = tmp_path / "merged"
    registry.export(card.ref, base=base_dir, output=out, dtype="fp32", progress=False)
    expected = peft_logits(base_dir, folder)
    assert (expected - hf_logits(base_dir)).abs().max() > MIN_EFFECT
    torch.testing.assert_close(hf_logits(out), expected, rtol=0, atol=EXPORT_TOL)
