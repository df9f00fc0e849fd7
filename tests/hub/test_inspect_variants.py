"""Inspect refuses folders whose tensors contradict the config of the adapters issue 9 made
valid (trainable tokens, LoRA variant state, expert LoRA), naming the module and the field."""

from __future__ import annotations

import json
import shutil

import pytest

from hub.inspect import inspect_adapter
from schemas.errors import InvalidAdapter


def _save(base_dir, folder, **kwargs):
    import peft
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], **kwargs)
    peft.get_peft_model(model, config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokens_adapter(base_dir, tmp_path_factory):
    return _save(base_dir, tmp_path_factory.mktemp("tokens"), trainable_token_indices=[3, 5, 7])


def _edit(folder, tmp_path, **changes):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    path = copy / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return copy


def _error(folder):
    with pytest.raises(InvalidAdapter) as error:
        inspect_adapter(folder)
    return str(error.value)


def test_trainable_token_rows_must_match_the_indices(tokens_adapter, tmp_path):
    card = inspect_adapter(tokens_adapter)
    assert card.target_modules == ["embed_tokens", "q_proj", "v_proj"]
    assert card.details["trainable_token_indices"] == [3, 5, 7]
    folder = _edit(tokens_adapter, tmp_path, trainable_token_indices=[3, 5])
    assert _error(folder) == (
        "adapter_model.safetensors: module 'model.embed_tokens' has trained token rows of shape"
        " (3, 64) but adapter_config.json's trainable_token_indices gives [3, 5] for it"
    )


def test_variant_state_needs_its_config(base_dir, tmp_path):
    from peft.tuners.lora.config import KasaConfig

    folder = _save(base_dir, tmp_path / "kasa", kasa_config=KasaConfig())
    assert inspect_adapter(folder).variant == "kasa"
    edited = _edit(folder, tmp_path, kasa_config=None)
    assert _error(edited) == (
        "adapter_model.safetensors: module 'model.layers.0.self_attn.q_proj' has a lora_diag"
        " tensor but adapter_config.json has no kasa_config"
    )


def test_bdlora_block_diagonal_factor_rank(base_dir, tmp_path):
    from peft.tuners.lora.config import BdLoraConfig

    bd = BdLoraConfig(target_modules_bd_a=["q_proj"], target_modules_bd_b=["v_proj"], nblocks=2)
    folder = _save(base_dir, tmp_path / "bd", use_bdlora=bd)
    assert inspect_adapter(folder).variant == "bdlora"
    edited = _edit(folder, tmp_path, use_bdlora={**bd.__dict__, "nblocks": 4})
    assert _error(edited) == (
        "adapter_model.safetensors: module 'model.layers.0.self_attn.v_proj' has rank 2 in"
        " lora_B.weight but adapter_config.json says r=4 / nblocks=4 (BD-LoRA)"
    )
