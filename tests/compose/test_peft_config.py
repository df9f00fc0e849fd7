"""compose.peft_config: the config facts that decide merging, checked against the real peft."""

from __future__ import annotations

import dataclasses

import peft
import pytest
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

from compose.peft_config import (
    KNOWN_KEYS,
    PEFT_VERSION,
    base_changing_init,
    merge_refusal,
    unknown_keys,
)


@pytest.mark.parametrize("peft_type", sorted(KNOWN_KEYS))
def test_known_keys_are_the_installed_peft_config_fields(peft_type):
    fields = {f.name for f in dataclasses.fields(PEFT_TYPE_TO_CONFIG_MAPPING[peft_type])}
    if peft.__version__ == PEFT_VERSION:
        assert fields == KNOWN_KEYS[peft_type]
    else:  # another peft may add fields (unknown to hub: safe), but must still have ours
        assert KNOWN_KEYS[peft_type] <= fields, f"peft {peft.__version__}: regenerate KNOWN_KEYS"


def test_a_saved_config_has_no_unknown_keys(tmp_path):
    config = peft.LoraConfig(r=4, target_modules=["q_proj"], use_dora=True)
    config.save_pretrained(tmp_path)
    import json

    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert unknown_keys(saved) == []
    assert merge_refusal(saved) is None


def test_unknown_keys_block_merging_only_when_on():
    config = {"peft_type": "LORA", "r": 4, "use_future": False, "future_config": None}
    assert unknown_keys(config) == ["future_config", "use_future"]
    assert merge_refusal(config) is None
    config["use_future"] = True
    assert merge_refusal(config) == (
        f"sets adapter_config.json field(s) 'use_future'=True, unknown to PEFT {PEFT_VERSION}"
        " (the version hub reads configs as): they may change the forward pass, so it is not"
        " merged; use a hub release that knows them"
    )
    assert unknown_keys({"peft_type": "FOURIERFT", "anything": 1}) == []  # not judged


@pytest.mark.parametrize(
    ("init", "flagged"),
    [
        ("pissa", True),
        ("pissa_niter_4", True),
        ("olora", True),
        ("corda", True),
        ("loftq", True),
        (True, False),
        ("gaussian", False),
        ("eva", False),
        ("mica", False),
        ("orthogonal", False),
    ],
)
def test_base_changing_inits(init, flagged):
    assert (base_changing_init({"init_lora_weights": init}) is not None) is flagged
