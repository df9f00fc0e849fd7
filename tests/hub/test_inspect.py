"""hub.inspect on real adapters of every PEFT method, and on every kind of broken folder."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hub.inspect import inspect_adapter, read_safetensors_header
from schemas import InvalidAdapter, UnsafeFormat
from tests.factories import METHODS, load_base

EXPECTED = {
    # method: (card method, variant, rank, alpha, target_modules)
    "lora": ("lora", None, 8, 16.0, ["q_proj", "v_proj"]),
    "dora": ("lora", "dora", 4, 8.0, ["q_proj", "v_proj"]),
    "rslora": ("lora", "rslora", 8, 16.0, ["down_proj", "lm_head", "q_proj", "v_proj"]),
    "adalora": ("adalora", None, 6, 8.0, ["q_proj", "v_proj"]),
    "ia3": ("ia3", None, None, None, ["down_proj", "k_proj", "v_proj"]),
    "loha": ("loha", None, 4, 8.0, ["q_proj", "v_proj"]),
    "lokr": ("lokr", None, 4, 8.0, ["q_proj", "v_proj"]),
    "oft": ("oft", None, None, None, ["q_proj", "v_proj"]),
    "boft": ("boft", None, None, None, ["q_proj", "v_proj"]),
    "vera": ("vera", None, 8, None, ["q_proj", "v_proj"]),
    "prompt_tuning": ("prompt_tuning", None, 5, None, []),
    "prefix_tuning": ("prefix_tuning", None, 5, None, []),
    "p_tuning": ("p_tuning", None, 5, None, []),
}


def _stored_numel(folder):
    with safe_open(folder / "adapter_model.safetensors", "pt") as fh:
        return {k: int(np.prod(fh.get_slice(k).get_shape())) for k in fh.keys()}  # noqa: SIM118


@pytest.mark.parametrize("method", sorted(METHODS))
def test_card_of_every_method(method, adapters, base_dir):
    folder = adapters(method)
    card = inspect_adapter(folder)
    expected_method, variant, rank, alpha, targets = EXPECTED[method]
    assert (card.method, card.variant, card.rank, card.alpha) == (
        expected_method,
        variant,
        rank,
        alpha,
    )
    assert card.target_modules == targets
    assert card.task_type == "CAUSAL_LM"
    assert card.base_model == str(base_dir)
    numel = _stored_numel(folder)
    frozen = {k for k in numel if k.endswith(("vera_A", "vera_B"))}
    assert card.params_trainable == sum(v for k, v in numel.items() if k not in frozen)
    base_params = sum(p.numel() for p in load_base(base_dir).parameters())
    assert card.params_base == base_params
    assert card.params_fraction == pytest.approx(card.params_trainable / base_params)
    assert card.dtypes == ["f32"]
    assert card.size_bytes == sum(p.stat().st_size for p in folder.iterdir())
    if method in ("prompt_tuning", "prefix_tuning", "p_tuning"):
        assert card.inference_overhead.model_dump() == {
            "none_when_merged": False,
            "extra_tokens": 5,
            "extra_layers": 0,
        }
    else:
        modules = 6 if method in ("rslora", "ia3") else 4
        assert card.inference_overhead.model_dump() == {
            "none_when_merged": True,
            "extra_tokens": 0,
            "extra_layers": modules,
        }
    assert card.description is None  # PEFT's untouched README template


def test_rank_and_alpha_patterns_are_in_details(adapters):
    card = inspect_adapter(adapters("rslora"))
    assert card.details["rank_pattern"] == {"q_proj": 4}
    assert card.details["alpha_pattern"] == {"v_proj": 32}
    assert card.details["modules_to_save"] == ["lm_head"]
    assert card.details["module_ranks"]["model.layers.0.self_attn.q_proj"] == 4
    assert card.details["module_ranks"]["model.layers.0.mlp.down_proj"] == 8
    assert card.details["layers"] == [0, 1]


def test_adalora_effective_rank_counts_surviving_singular_values(adapters, tmp_path):
    folder = tmp_path / "pruned"
    shutil.copytree(adapters("adalora"), folder)
    tensors = load_file(folder / "adapter_model.safetensors")
    e_keys = sorted(k for k in tensors if k.endswith("lora_E"))
    for i, key in enumerate(e_keys):
        tensors[key][: 2 + i % 3] = 0.0  # prune 2, 3 or 4 of 6 triplets
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    card = inspect_adapter(folder)
    assert card.rank == 4
    assert sorted(card.details["module_ranks"].values()) == [2, 3, 4, 4]
    assert card.details["rank_budget"] == 13


def test_description_from_readme(adapters, tmp_path):
    folder = tmp_path / "a"
    shutil.copytree(adapters("lora"), folder)
    (folder / "README.md").write_text("---\nlicense: mit\ndescription: SQL from text\n---\n# x\n")
    assert inspect_adapter(folder).description == "SQL from text"
    (folder / "README.md").write_text("# Title\n\nTurns questions\ninto SQL.\n\nMore.\n")
    assert inspect_adapter(folder).description == "Turns questions into SQL."


# -- broken folders ------------------------------------------------------------------------


@pytest.fixture
def lora_copy(adapters, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(adapters("lora"), folder)
    return folder


def _error(folder, **kwargs):
    with pytest.raises(InvalidAdapter) as info:
        inspect_adapter(folder, **kwargs)
    return str(info.value)


def test_truncated_safetensors(lora_copy):
    weights = lora_copy / "adapter_model.safetensors"
    data = weights.read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    weights.write_bytes(data[:-1000])
    assert _error(lora_copy) == (
        "adapter_model.safetensors is truncated: its header says"
        f" {len(data) - 8 - header_len} bytes of tensor data, the file has"
        f" {len(data) - 8 - header_len - 1000}"
    )
    weights.write_bytes(data[:100])
    assert _error(lora_copy) == (
        f"adapter_model.safetensors is corrupt or truncated: its header claims {header_len}"
        " bytes, the file has 100"
    )
    weights.write_bytes(b"\x01\x02")
    assert _error(lora_copy) == (
        "adapter_model.safetensors is truncated: 2 bytes, too short for a header"
    )


def test_corrupt_header(lora_copy):
    weights = lora_copy / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:20] = b"#garbage####"
    weights.write_bytes(bytes(data))
    assert _error(lora_copy) == "adapter_model.safetensors is corrupt: its header is not valid JSON"


def test_missing_and_malformed_config(lora_copy):
    (lora_copy / "adapter_config.json").unlink()
    assert _error(lora_copy) == (
        f"{lora_copy}: no adapter_config.json (is this a folder written by PEFT's save_pretrained?)"
    )
    (lora_copy / "adapter_config.json").write_text('{"peft_type": "LORA",\n "r": 8,,}')
    assert _error(lora_copy) == (
        "adapter_config.json is not valid JSON (line 2, column 9: Expecting property name"
        " enclosed in double quotes)"
    )


def _edit_config(folder, **changes):
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_unknown_or_missing_peft_type(lora_copy):
    _edit_config(lora_copy, peft_type="SUPERLORA")
    assert _error(lora_copy) == (
        "adapter_config.json: field 'peft_type' is 'SUPERLORA', not one of the supported"
        " methods (LORA, ADALORA, IA3, LOHA, LOKR, OFT, BOFT, VERA, PROMPT_TUNING,"
        " PREFIX_TUNING, P_TUNING)"
    )
    _edit_config(lora_copy, peft_type=None)
    assert _error(lora_copy) == "adapter_config.json: field 'peft_type' is missing"


def test_wrong_field_type(lora_copy):
    _edit_config(lora_copy, r="eight")
    assert _error(lora_copy) == "adapter_config.json: field 'r' must be an integer, got 'eight'"


def test_rank_contradicting_config(lora_copy):
    _edit_config(lora_copy, r=16)
    assert _error(lora_copy) == (
        "adapter_model.safetensors: module 'model.layers.0.self_attn.q_proj' has rank 8 in"
        " lora_A.weight but adapter_config.json says r=16"
    )
    _edit_config(lora_copy, r=8, rank_pattern={"v_proj": 4})
    assert _error(lora_copy) == (
        "adapter_model.safetensors: module 'model.layers.0.self_attn.v_proj' has rank 8 in"
        " lora_A.weight but adapter_config.json says rank_pattern['v_proj']=4"
    )


def test_module_outside_target_modules(lora_copy):
    _edit_config(lora_copy, target_modules=["q_proj"])
    assert _error(lora_copy) == (
        "adapter_model.safetensors: module 'model.layers.0.self_attn.v_proj' has adapter weights"
        " but is not in target_modules ['q_proj'] (adapter_config.json)"
    )


def test_nonfinite_values(lora_copy):
    weights = lora_copy / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    tensors[key][3, 2] = float("nan")
    save_file(tensors, weights)
    assert _error(lora_copy) == (
        f"adapter_model.safetensors: tensor {key!r} contains NaN or Inf values"
        " (push with --allow-nonfinite to accept it)"
    )
    assert inspect_adapter(lora_copy, allow_nonfinite=True).rank == 8


@pytest.mark.parametrize(
    ("dtype", "name"), [(torch.bfloat16, "bf16"), (torch.float16, "f16"), (torch.float64, "f64")]
)
def test_nonfinite_in_every_float_dtype(lora_copy, dtype, name):
    weights = lora_copy / "adapter_model.safetensors"
    tensors = {k: v.to(dtype) for k, v in load_file(weights).items()}
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    save_file(tensors, weights)
    assert inspect_adapter(lora_copy).dtypes == [name]
    tensors[key][0, 0] = float("-inf")
    save_file(tensors, weights)
    assert key in _error(lora_copy)


def test_pickle_only_adapter_is_refused(lora_copy):
    tensors = load_file(lora_copy / "adapter_model.safetensors")
    (lora_copy / "adapter_model.safetensors").unlink()
    torch.save(tensors, lora_copy / "adapter_model.bin")
    with pytest.raises(UnsafeFormat) as info:
        inspect_adapter(lora_copy)
    assert str(info.value) == (
        f"{lora_copy / 'adapter_model.bin'} is a pickle file, which hub never loads (it can run"
        f" code); convert it safely with `hub convert {lora_copy}`"
    )


def test_prompt_rows_contradicting_config(adapters, tmp_path):
    folder = tmp_path / "prompt"
    shutil.copytree(adapters("prompt_tuning"), folder)
    _edit_config(folder, num_virtual_tokens=7)
    assert _error(folder) == (
        "adapter_model.safetensors: prompt_embeddings has 5 rows but adapter_config.json says"
        " num_virtual_tokens=7 x num_transformer_submodules=1"
    )


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_header_parser_only_ever_raises_invalid_adapter(data, adapters, tmp_path_factory):
    original = (adapters("lora") / "adapter_model.safetensors").read_bytes()
    mode = data.draw(st.sampled_from(["truncate", "flip", "random"]))
    if mode == "truncate":
        blob = original[: data.draw(st.integers(0, len(original) - 1))]
    elif mode == "flip":
        position = data.draw(st.integers(0, min(len(original) - 1, 2000)))
        blob = bytearray(original)
        blob[position] ^= data.draw(st.integers(1, 255))
        blob = bytes(blob)
    else:
        blob = data.draw(st.binary(max_size=300))
    path = tmp_path_factory.mktemp("fuzz") / "adapter_model.safetensors"
    path.write_bytes(blob)
    try:
        read_safetensors_header(path)
    except InvalidAdapter as error:
        assert str(error).startswith("adapter_model.safetensors")
