"""hub.inspect on real adapters of every PEFT method, and on every kind of broken folder."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hub.inspect import count_base_params, inspect_adapter, read_safetensors_header
from hub.inspect import safetensors_header as header_module
from schemas import InvalidAdapter, UnsafeFormat
from tests.factories import (
    METHODS,
    TINY_LLAMA,
    load_base,
    make_adapter,
    make_base,
    make_pruned_adalora,
)

EXPECTED = {
    # method: (card method, variant, rank, alpha, target_modules, adapted modules)
    "lora": ("lora", None, 8, 16.0, ["q_proj", "v_proj"], 4),
    "dora": ("lora", "dora", 4, 8.0, ["q_proj", "v_proj"], 4),
    "rslora": ("lora", "rslora", 8, 16.0, ["down_proj", "lm_head", "q_proj", "v_proj"], 6),
    "adalora": ("adalora", None, 6, 8.0, ["q_proj", "v_proj"], 4),
    "ia3": ("ia3", None, None, None, ["down_proj", "k_proj", "v_proj"], 6),
    "loha": ("loha", None, 4, 8.0, ["q_proj", "v_proj"], 4),
    "lokr": ("lokr", None, 4, 8.0, ["q_proj", "v_proj"], 4),
    "oft": ("oft", None, 8, None, ["q_proj", "v_proj"], 4),  # rank: 64 inputs / blocks of 8
    "boft": ("boft", None, None, None, ["q_proj", "v_proj"], 4),
    "vera": ("vera", None, 8, None, ["q_proj", "v_proj"], 4),
    "prompt_tuning": ("prompt_tuning", None, 5, None, [], 0),
    "prefix_tuning": ("prefix_tuning", None, 5, None, [], 0),
    "p_tuning": ("p_tuning", None, 5, None, [], 0),
}
WEIGHTS = "adapter_model.safetensors"
Q_PROJ_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


def _stored_numel(folder):
    with safe_open(folder / WEIGHTS, "pt") as fh:
        return {k: int(np.prod(fh.get_slice(k).get_shape())) for k in fh.keys()}  # noqa: SIM118


def test_methods_cover_every_card_method():
    assert sorted(METHODS) == sorted(EXPECTED)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_card_of_every_method(method, adapters, base_dir):
    folder = adapters(method)
    card = inspect_adapter(folder)
    expected_method, variant, rank, alpha, targets, modules = EXPECTED[method]
    assert (card.method, card.variant, card.rank, card.alpha) == (
        expected_method,
        variant,
        rank,
        alpha,
    )
    assert card.target_modules == targets
    assert (card.task_type, card.base_model, card.base_revision) == (
        "CAUSAL_LM",
        str(base_dir),
        None,
    )
    numel = _stored_numel(folder)
    frozen = {k for k in numel if k.endswith(("vera_A", "vera_B"))}
    assert bool(frozen) == (method == "vera")
    assert card.params_trainable == sum(v for k, v in numel.items() if k not in frozen)
    base_params = sum(p.numel() for p in load_base(base_dir).parameters())
    assert card.params_base == base_params
    assert card.params_fraction == pytest.approx(card.params_trainable / base_params)
    assert card.dtypes == ["f32"]
    assert card.size_bytes == sum(p.stat().st_size for p in folder.iterdir())
    prompt = method in ("prompt_tuning", "prefix_tuning", "p_tuning")
    assert card.inference_overhead.model_dump() == {
        "none_when_merged": not prompt,
        "extra_tokens": 5 if prompt else 0,
        "extra_layers": modules,
    }
    assert card.details["peft_version"]
    assert card.description is None  # PEFT's untouched README template


def test_method_details(adapters):
    rslora = inspect_adapter(adapters("rslora")).details
    assert rslora["rank_pattern"] == {"q_proj": 4}
    assert rslora["alpha_pattern"] == {"v_proj": 32}
    assert rslora["modules_to_save"] == ["lm_head"]
    assert rslora["use_rslora"] is True
    assert rslora["module_ranks"]["model.layers.0.self_attn.q_proj"] == 4
    assert rslora["module_ranks"]["model.layers.0.mlp.down_proj"] == 8
    assert rslora["layers"] == [0, 1]
    assert "module_ranks" not in inspect_adapter(adapters("lora")).details  # uniform rank
    assert inspect_adapter(adapters("dora")).details["use_dora"] is True
    assert inspect_adapter(adapters("oft")).details["oft_block_size"] == 8
    boft = inspect_adapter(adapters("boft")).details
    assert (boft["boft_block_size"], boft["boft_block_num"]) == (8, 8)
    assert inspect_adapter(adapters("ia3")).details["feedforward_modules"] == ["down_proj"]
    assert inspect_adapter(adapters("adalora")).details["module_ranks"] == {
        f"model.layers.{i}.self_attn.{m}": 6 for i in (0, 1) for m in ("q_proj", "v_proj")
    }


def test_adalora_effective_rank_after_real_rank_allocation(base_dir, tmp_path):
    folder = make_pruned_adalora(tmp_path / "pruned", base_dir)
    config = json.loads((folder / "adapter_config.json").read_text())
    kept = {key.removesuffix(".lora_E"): sum(mask) for key, mask in config["rank_pattern"].items()}
    card = inspect_adapter(folder)
    assert card.details["module_ranks"] == kept
    assert card.rank == max(kept.values())
    assert card.details["rank_budget"] == sum(kept.values())
    assert card.params_trainable == sum(_stored_numel(folder).values())


def test_adalora_zeroed_singular_values_do_not_count(adapters, tmp_path):
    folder = tmp_path / "pruned"
    shutil.copytree(adapters("adalora"), folder)
    tensors = load_file(folder / WEIGHTS)
    e_keys = sorted(k for k in tensors if k.endswith("lora_E"))
    for i, key in enumerate(e_keys):
        tensors[key][: 2 + i % 3] = 0.0  # prune 2, 3 or 4 of 6 triplets
    save_file(tensors, folder / WEIGHTS, metadata={"format": "pt"})
    card = inspect_adapter(folder)
    assert card.rank == 4
    assert sorted(card.details["module_ranks"].values()) == [2, 3, 4, 4]
    assert card.details["rank_budget"] == 13


# -- parameter counts of the base ----------------------------------------------------------


def test_params_base_from_given_config_and_tied_embeddings(adapters, base_dir, tmp_path):
    config = json.loads((base_dir / "config.json").read_text())
    actual = sum(p.numel() for p in load_base(base_dir).parameters())
    assert count_base_params(config) == actual
    folder = tmp_path / "elsewhere"
    shutil.copytree(adapters("lora"), folder)
    _edit_config(folder, base_model_name_or_path="meta-llama/Llama-2-7b-hf")
    assert inspect_adapter(folder).params_base is None  # not local, no config given
    card = inspect_adapter(folder, base_config=config)
    assert (card.params_base, card.base_model) == (actual, "meta-llama/Llama-2-7b-hf")

    tied = make_base(tmp_path / "tied", tie_word_embeddings=True)
    tied_actual = sum(p.numel() for p in load_base(tied).parameters())
    assert tied_actual == actual - TINY_LLAMA["vocab_size"] * TINY_LLAMA["hidden_size"]
    assert count_base_params(json.loads((tied / "config.json").read_text())) == tied_actual
    _edit_config(folder, base_model_name_or_path=str(tied))
    assert inspect_adapter(folder).params_base == tied_actual  # from its safetensors headers


@pytest.mark.parametrize(
    ("config_class", "extra"),
    [
        ("LlamaConfig", {}),
        ("LlamaConfig", {"attention_bias": True, "mlp_bias": True}),
        ("MistralConfig", {}),
        ("MixtralConfig", {"num_local_experts": 4}),
        ("Qwen2Config", {}),
        ("Qwen3Config", {"head_dim": 32}),
        ("Phi3Config", {"pad_token_id": 0}),
        ("GemmaConfig", {"head_dim": 16}),
        ("Gemma2Config", {"head_dim": 16}),
    ],
)
def test_count_base_params_matches_transformers(config_class, extra):
    import transformers

    small = {**TINY_LLAMA, "intermediate_size": 96, "eos_token_id": 1, "bos_token_id": 0}
    config = getattr(transformers, config_class)(**small, **extra)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    saved = json.loads(config.to_json_string(use_diff=True))  # what config.json holds
    assert count_base_params(saved) == sum(p.numel() for p in model.parameters())


def test_count_base_params_unknown_architecture():
    assert count_base_params({"model_type": "t5", "vocab_size": 10}) is None
    assert count_base_params({"model_type": "llama"}) is None  # incomplete: no guess


# -- descriptions --------------------------------------------------------------------------


def test_description_from_readme(adapters, tmp_path):
    folder = tmp_path / "a"
    shutil.copytree(adapters("lora"), folder)
    readme = folder / "README.md"
    template = readme.read_text()
    readme.write_text("---\nlicense: mit\ndescription: SQL from text\n---\n# x\n")
    assert inspect_adapter(folder).description == "SQL from text"
    readme.write_text("---\ndescription: >\n  Folded\n  YAML.\n---\nBody.\n")
    assert inspect_adapter(folder).description == "Folded YAML."
    readme.write_text("# Title\n\n[![ci](b.svg)](x)\n\nTurns questions\ninto SQL.\n\nMore.\n")
    assert inspect_adapter(folder).description == "Turns questions into SQL."
    readme.write_text("# T\n\n```\ncode\n\nmore code\n```\n\n- a list\n\n**Bold** prose.\n")
    assert inspect_adapter(folder).description == "**Bold** prose."
    filled = template.replace(
        "<!-- Provide a longer summary of what this model is. -->", "A LoRA that writes SQL."
    )
    readme.write_text(filled)
    assert inspect_adapter(folder).description == "A LoRA that writes SQL."


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


def _edit_config(folder, **changes):
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_truncated_safetensors(lora_copy):
    weights = lora_copy / WEIGHTS
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
    weights = lora_copy / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[8:20] = b"#garbage####"
    weights.write_bytes(bytes(data))
    assert _error(lora_copy) == "adapter_model.safetensors is corrupt: its header is not valid JSON"
    weights.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    assert _error(lora_copy) == (
        "adapter_model.safetensors is corrupt or truncated: its header claims 1099511627776"
        " bytes, the file has 10"
    )


def _write_raw(path, header, data):
    """A safetensors file with a hand-written header (to break what save_file never would)."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
             "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
            bytes(12),
            "w.safetensors is corrupt: tensor 'b' overlaps another tensor",
        ),
        (
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
            bytes(8),
            "w.safetensors is corrupt: tensor 'a' leaves a gap",
        ),
        (
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
            bytes(6),
            "w.safetensors is corrupt: 2 bytes after the last tensor's data",
        ),
        (
            {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
            bytes(8),
            "w.safetensors is corrupt: tensor 'a' has 8 bytes of data but shape (3,) in F32"
            " needs 12",
        ),
        (
            {"a": {"dtype": "Q4_K", "shape": [1], "data_offsets": [0, 1]}},
            bytes(1),
            "w.safetensors: tensor 'a' has unsupported dtype 'Q4_K'",
        ),
        (
            {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
            bytes(4),
            "w.safetensors is corrupt: tensor 'a' has an invalid shape [-1]",
        ),
        (
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}},
            bytes(4),
            "w.safetensors is corrupt: tensor 'a' has invalid data_offsets [4, 0]",
        ),
        (
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "__metadata__": [1]},
            bytes(4),
            "w.safetensors is corrupt: __metadata__ is not a JSON object",
        ),
    ],
)  # fmt: skip
def test_inconsistent_headers(tmp_path, header, data, message):
    path = _write_raw(tmp_path / "w.safetensors", header, data)
    with pytest.raises(InvalidAdapter) as info:
        read_safetensors_header(path)
    assert str(info.value) == message


def test_header_entries_and_metadata(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(2, 3), "y": torch.zeros(4, dtype=torch.bfloat16)}, path, {"k": "v"})
    tensors, metadata = read_safetensors_header(path)
    assert metadata == {"k": "v"}
    assert [(t.key, t.dtype, t.shape, t.data_offsets) for t in tensors.values()] == [
        ("x", "F32", (2, 3), (0, 24)),
        ("y", "BF16", (4,), (24, 32)),
    ]


def test_hostile_headers_are_invalid_adapter_not_crashes(tmp_path):
    path = tmp_path / "w.safetensors"
    for raw in (b"[" * 200_000, b'{"a": ' + b"9" * 5000 + b"}", b"\xff\xfe{}"):
        path.write_bytes(struct.pack("<Q", len(raw)) + raw)
        with pytest.raises(InvalidAdapter) as info:
            read_safetensors_header(path)
        assert str(info.value) == "w.safetensors is corrupt: its header is not valid JSON"


def test_missing_and_malformed_config(lora_copy):
    (lora_copy / "adapter_config.json").unlink()
    assert _error(lora_copy) == (
        f"{lora_copy}: no adapter_config.json (is this a PEFT adapter folder?)"
    )
    (lora_copy / "adapter_config.json").write_text('{"peft_type": "LORA",\n "r": 8,,}')
    assert _error(lora_copy) == (
        "adapter_config.json is not valid JSON (line 2, column 9: Expecting property name"
        " enclosed in double quotes)"
    )


def test_missing_weights(lora_copy):
    (lora_copy / WEIGHTS).unlink()
    assert _error(lora_copy) == (
        f"{lora_copy}: no adapter_model.safetensors (nor adapter_model.bin): the adapter's"
        " weights are missing"
    )


def test_unknown_or_missing_peft_type(lora_copy):
    _edit_config(lora_copy, peft_type="SUPERLORA")
    assert _error(lora_copy) == (
        "adapter_config.json: field 'peft_type' is 'SUPERLORA', which is no PEFT type this hub"
        " knows (it knows the 45 types of peft 0.21.2, from ADALORA to XLORA: check the field,"
        " or upgrade the hub)"
    )
    _edit_config(lora_copy, peft_type=None)
    assert _error(lora_copy) == "adapter_config.json: field 'peft_type' is missing"


def test_wrong_field_types(lora_copy):
    _edit_config(lora_copy, r="eight")
    assert _error(lora_copy) == "adapter_config.json: field 'r' must be an integer, got 'eight'"
    _edit_config(lora_copy, r=8, target_modules=7)
    assert _error(lora_copy) == (
        "adapter_config.json: field 'target_modules' must be a list of module names or a"
        " regex, got 7"
    )
    _edit_config(lora_copy, target_modules="(q_proj")
    assert _error(lora_copy).startswith(
        "adapter_config.json: field 'target_modules' is not a valid regular expression"
    )


def test_unknown_config_keys_are_tolerated(lora_copy):
    _edit_config(lora_copy, some_future_peft_option={"x": 1})
    assert inspect_adapter(lora_copy).rank == 8


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
    # PEFT's pattern rule: the key must match a whole suffix of the module name.
    _edit_config(lora_copy, rank_pattern={"layers.1.self_attn.v_proj": 8, "proj": 4})
    assert inspect_adapter(lora_copy).rank == 8


def test_other_methods_contradicting_config(adapters, tmp_path):
    cases = [
        ("loha", {"r": 2}, "module 'model.layers.0.self_attn.q_proj' has rank 4 in hada_w1_a"
         " but adapter_config.json says r=2"),
        ("vera", {"r": 4}, "shared projection 'base_model.vera_A' has shape (8, 64), which does"
         " not have rank adapter_config.json's r=4"),
        ("oft", {"oft_block_size": 4}, "module 'model.layers.0.self_attn.q_proj' has OFT"
         " blocks of size 8 but adapter_config.json says oft_block_size=4"),
        ("boft", {"boft_block_num": 4}, "module 'model.layers.0.self_attn.q_proj' has"
         " boft_block_num 8 in boft_R but adapter_config.json says boft_block_num=4"),
        ("prompt_tuning", {"num_virtual_tokens": 7}, "prompt_embeddings has 5 rows but"
         " adapter_config.json says num_virtual_tokens=7 x num_transformer_submodules=1"),
        ("prefix_tuning", {"num_layers": 3}, "prompt_embeddings is 128 wide but"
         " adapter_config.json implies 192 (num_layers=3 x 2 x token_dim=32)"),
    ]  # fmt: skip
    for method, changes, message in cases:
        folder = tmp_path / method
        shutil.copytree(adapters(method), folder)
        _edit_config(folder, **changes)
        assert _error(folder) == f"adapter_model.safetensors: {message}"


def test_module_outside_target_modules(lora_copy):
    _edit_config(lora_copy, target_modules=["q_proj"])
    assert _error(lora_copy) == (
        "adapter_model.safetensors: module 'model.layers.0.self_attn.v_proj' has adapter weights"
        " but is not in target_modules ['q_proj'] (adapter_config.json)"
    )
    _edit_config(lora_copy, target_modules=r".*\.q_proj")  # a regex is matched in full
    assert _error(lora_copy) == (
        "adapter_model.safetensors: module 'model.layers.0.self_attn.v_proj' has adapter weights"
        " but is not in target_modules '.*\\\\.q_proj' (adapter_config.json)"
    )
    for covering in (r".*\.(q|v)_proj", "all-linear", ["v_proj", "self_attn.q_proj"]):
        _edit_config(lora_copy, target_modules=covering)
        assert inspect_adapter(lora_copy).target_modules == ["q_proj", "v_proj"]
    _edit_config(lora_copy, layers_to_transform=[0])
    assert _error(lora_copy) == (
        "adapter_model.safetensors: module 'model.layers.1.self_attn.q_proj' has adapter"
        " weights but is in layer 1, outside layers_to_transform [0] (adapter_config.json)"
    )
    _edit_config(lora_copy, layers_to_transform=None, exclude_modules=["v_proj"])
    assert _error(lora_copy) == (
        "adapter_model.safetensors: module 'model.layers.0.self_attn.v_proj' has adapter"
        " weights but is excluded by exclude_modules ['v_proj'] (adapter_config.json)"
    )


def test_unexpected_tensor(lora_copy):
    tensors = load_file(lora_copy / WEIGHTS)
    tensors["base_model.model.model.norm.weight"] = torch.ones(64)
    save_file(tensors, lora_copy / WEIGHTS)
    assert _error(lora_copy) == (
        "adapter_model.safetensors: tensor 'base_model.model.model.norm.weight' is neither a"
        " lora tensor nor part of a module in modules_to_save (adapter_config.json)"
    )


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_trained_biases_are_accepted(bias, tmp_path):
    base = make_base(tmp_path / "base", attention_bias=True)
    folder = make_adapter("lora", tmp_path / "lora", base, bias=bias)
    card = inspect_adapter(folder)
    assert card.params_trainable == sum(_stored_numel(folder).values())
    assert card.target_modules == ["q_proj", "v_proj"]
    assert card.details["bias"] == bias
    expected = ["k_proj", "o_proj", "q_proj", "v_proj"] if bias == "all" else ["q_proj", "v_proj"]
    assert card.details["bias_modules"] == expected


def test_nonfinite_values(lora_copy):
    weights = lora_copy / WEIGHTS
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
    ("dtype", "name", "bad"),
    [
        (torch.bfloat16, "bf16", float("-inf")),
        (torch.float16, "f16", float("inf")),
        (torch.float64, "f64", float("nan")),
        (torch.float8_e4m3fn, "f8_e4m3", float("nan")),  # e4m3fn has no Inf, only NaN
        (torch.float8_e5m2, "f8_e5m2", float("inf")),
    ],
)
def test_nonfinite_in_every_float_dtype(lora_copy, dtype, name, bad):
    weights = lora_copy / WEIGHTS
    tensors = {k: v.to(dtype) for k, v in load_file(weights).items()}
    save_file(tensors, weights)
    card = inspect_adapter(lora_copy)
    assert card.dtypes == [name]
    tensors[Q_PROJ_A][0, 0] = bad
    save_file(tensors, weights)
    assert _error(lora_copy) == (
        f"adapter_model.safetensors: tensor {Q_PROJ_A!r} contains NaN or Inf values"
        " (push with --allow-nonfinite to accept it)"
    )


def test_nonfinite_found_in_a_later_window(tmp_path, monkeypatch):
    # The scan reads fixed-size windows of the memory map; a NaN past the first one counts.
    monkeypatch.setattr(header_module, "_CHECK_CHUNK_BYTES", 64)
    path = tmp_path / "w.safetensors"
    for dtype in (torch.float32, torch.bfloat16):
        values = torch.zeros(1000, dtype=dtype)
        save_file({"ok": torch.zeros(10), "x": values}, path)
        tensors, _ = read_safetensors_header(path)
        assert header_module.find_nonfinite(path, tensors) is None
        values[777] = float("nan")
        save_file({"ok": torch.zeros(10), "x": values}, path)
        assert header_module.find_nonfinite(path, tensors) == "x"


def test_pickle_only_adapter_is_refused(lora_copy):
    tensors = load_file(lora_copy / WEIGHTS)
    (lora_copy / WEIGHTS).unlink()
    torch.save(tensors, lora_copy / "adapter_model.bin")
    with pytest.raises(UnsafeFormat) as info:
        inspect_adapter(lora_copy)
    assert str(info.value) == (
        f"{lora_copy / 'adapter_model.bin'} is a pickle file, which hub never loads (it can run"
        f" code); convert it safely with `hub convert {lora_copy}`"
    )


def test_older_peft_key_names(adapters, tmp_path):
    """DoRA's magnitude and AdaLoRA's factors were saved with a ``.weight`` suffix before."""
    for method, old in (("dora", "lora_magnitude_vector"), ("adalora", "lora_")):
        folder = tmp_path / method
        shutil.copytree(adapters(method), folder)
        tensors = load_file(folder / WEIGHTS)
        renamed = {
            (k + ".weight" if k.rsplit(".", 1)[-1].startswith(old) else k): v
            for k, v in tensors.items()
        }
        assert renamed.keys() != tensors.keys()
        save_file(renamed, folder / WEIGHTS)
        assert inspect_adapter(folder).rank == inspect_adapter(adapters(method)).rank


def test_inspect_does_not_import_torch(adapters):
    code = (
        "import sys; from hub.inspect import inspect_adapter;"
        f" card = inspect_adapter({str(adapters('lora'))!r});"
        " assert card.rank == 8; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_header_parser_only_ever_raises_invalid_adapter(data, adapters, tmp_path_factory):
    original = (adapters("lora") / WEIGHTS).read_bytes()
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
    path = tmp_path_factory.mktemp("fuzz") / WEIGHTS
    path.write_bytes(blob)
    try:
        tensors, _ = read_safetensors_header(path)
    except InvalidAdapter as error:
        assert str(error).startswith("adapter_model.safetensors")
    else:
        header_module.find_nonfinite(path, tensors)  # must not crash either
