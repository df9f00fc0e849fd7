"""The generic PEFT types the shared fidelity harness (``test_fidelity.py``) cannot run as
plain rows (task ids in the forward pass, X-LoRA's subfolders),
the exact text of the PEFT-path refusals, a non-fp32 PEFT-path export, and multi-adapter
saves: push, card, pull byte-identical, PeftModel load, export or one clear refusal.
"""

from __future__ import annotations

import json

import pytest
import torch

from schemas.errors import IncompatibleAdapters
from schemas.methods import METHODS
from tests.factories import load_base, make_adapter
from tests.peft_types import FORWARD_KWARGS, GENERIC_TYPES, SPECIAL_FORWARD, make_typed_adapter

IDS = torch.tensor([[1, 5, 9, 42, 7, 3]])


@pytest.fixture(scope="module")
def typed(tmp_path_factory, base_dir):
    root, cache = tmp_path_factory.mktemp("typed"), {}

    def build(peft_type):
        if peft_type not in cache:
            cache[peft_type] = make_typed_adapter(peft_type, root / peft_type, base_dir)
        return cache[peft_type]

    return build


def _logits(model, peft_type):
    kwargs = {k: torch.tensor(v) for k, v in FORWARD_KWARGS.get(peft_type, {}).items()}
    with torch.no_grad():
        return model(input_ids=IDS, **kwargs).logits


def _peft_model(base_dir, folder, trainable=False):
    from peft import PeftModel

    base = load_base(base_dir)
    config = json.loads((folder / "adapter_config.json").read_text())
    if config["peft_type"] == "XLORA":
        base.config.use_cache = False  # X-LoRA refuses a model with the KV cache on
    return PeftModel.from_pretrained(base, str(folder), is_trainable=trainable).eval()


def _peft_trainable(peft_type, base_dir, folder):
    """PEFT's own count: after loading for training, or (prompt learning, which PEFT will not
    load as trainable) of the model the adapter was built from."""
    if METHODS[peft_type].family != "prompt":
        return _peft_model(base_dir, folder, trainable=True).get_nb_trainable_parameters()[0]
    from peft import get_peft_model
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    config = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type.upper()](
        task_type="CAUSAL_LM", **GENERIC_TYPES[peft_type]
    )
    return get_peft_model(load_base(base_dir), config).get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("peft_type", sorted(SPECIAL_FORWARD - {"xlora"}))
def test_push_card_pull_load(peft_type, typed, registry, base_dir, tmp_path):
    folder = typed(peft_type)
    row = METHODS[peft_type]
    card = registry.push(folder, name=f"generic/{peft_type.replace('_', '-')}").card

    assert card.method == peft_type
    assert card.details["family"] == row.family
    assert card.base_model == str(base_dir)
    config = json.loads((folder / "adapter_config.json").read_text())
    if row.family == "prompt":
        assert card.target_modules == []
        assert card.inference_overhead.extra_tokens == config["num_virtual_tokens"]
        assert card.rank == config["num_virtual_tokens"]
    else:
        expected = GENERIC_TYPES[peft_type].get("target_modules", [])
        if peft_type == "adaption_prompt":
            expected = ["self_attn"]
        assert card.target_modules == sorted(expected)
        assert card.inference_overhead.extra_tokens == 0
        assert card.inference_overhead.extra_layers > 0
    assert card.inference_overhead.none_when_merged == (row.family == "mergeable")
    peft_count = _peft_trainable(peft_type, base_dir, folder)
    if row.params_note is None:
        assert card.params_trained == card.params_trainable == peft_count
    else:  # the card says why it differs
        assert card.details["params_note"] == row.params_note
        assert card.params_notes["params_trained"] == row.params_note
        assert card.params_trainable > peft_count
    # the ledger: a generic card cannot say which base values PEFT's merge rewrites
    if row.family == "prompt":
        assert card.params_changed_when_merged == 0
    else:
        assert card.params_changed_when_merged is None
        assert card.params_unknown["params_changed_when_merged"].endswith(
            "cannot be merged into the base weights (it runs unmerged only)"
            if row.merge == "none"
            else f"which base values PEFT's merge of {peft_type} rewrites is not read from its"
            " tensors"
        )
    assert card.params_extra_at_inference == card.params_stored + card.params_stored_frozen
    assert registry.search(method=peft_type)[0].commit == card.commit

    pulled = registry.pull(card.ref, tmp_path / "pulled")
    originals = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    assert sorted(p.relative_to(pulled) for p in pulled.rglob("*") if p.is_file()) == originals
    for rel in originals:
        assert (pulled / rel).read_bytes() == (folder / rel).read_bytes()

    expected_model = _peft_model(base_dir, folder)
    got_model = _peft_model(base_dir, pulled)
    torch.testing.assert_close(_logits(got_model, peft_type), _logits(expected_model, peft_type))


def _export(registry, ref, base_dir, out, fmt="safetensors", dtype="fp32"):
    return registry.export(
        ref, base=str(base_dir), output=out, format=fmt, dtype=dtype, progress=False
    )


def test_peft_only_methods_refuse_other_formats(typed, registry, base_dir, tmp_path):
    ref = registry.push(typed("fourierft"), name="generic/fourierft").card.ref
    with pytest.raises(IncompatibleAdapters) as refused:
        _export(registry, ref, base_dir, tmp_path / "gguf", fmt="gguf", dtype=None)
    assert str(refused.value) == (
        f"adapter {ref}: method fourierft is merged by PEFT's merge_and_unload, which only"
        " gives merged weights: --format gguf is not supported for it; export"
        " --format safetensors (then convert that folder if needed)"
    )
    assert not (tmp_path / "gguf").exists()


@pytest.mark.parametrize("method", ["oft", "boft"])
def test_oft_and_boft_export_through_peft(method, adapters, registry, base_dir, tmp_path):
    folder = adapters(method)
    ref = registry.push(folder, name=f"generic/{method}").card.ref
    _export(registry, ref, base_dir, tmp_path / "merged", dtype="bf16")
    merged = load_base(tmp_path / "merged")
    expected = _logits(_peft_model(base_dir, folder), method)
    # Rounded once to bf16 (8 bits of mantissa) from the fp32 merge.
    torch.testing.assert_close(_logits(merged, method), expected, atol=5e-2, rtol=0)
    header = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert header["dtype"] == "bfloat16"


def test_peft_refusal_is_one_clear_error_and_writes_nothing(typed, registry, base_dir, tmp_path):
    ref = registry.push(typed("beft"), name="generic/beft").card.ref
    with pytest.raises(IncompatibleAdapters) as refused:
        _export(registry, ref, base_dir, tmp_path / "out")
    assert str(refused.value) == (
        f"adapter {ref}: PEFT cannot merge it into this base"
        " (ValueError: Base layer has no bias, cannot merge bias adapter default)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub-home"]  # no output, no staging


@pytest.mark.parametrize("peft_type", ["poly", "lily"])
@pytest.mark.parametrize("fmt", ["safetensors", "gguf", "vllm-bundle"])
def test_unmergeable_types_are_refused_with_the_reason(
    peft_type, fmt, typed, registry, base_dir, tmp_path
):
    ref = registry.push(typed(peft_type), name=f"generic/{peft_type.replace('_', '-')}").card.ref
    with pytest.raises(IncompatibleAdapters) as refused:
        _export(registry, ref, base_dir, tmp_path / "out", fmt=fmt, dtype=None)
    assert str(refused.value) == (
        f"adapter {ref}: method {peft_type} cannot be merged into weights"
        f" ({METHODS[peft_type].note}); serve it with the PEFT runtime:"
        " PeftModel.from_pretrained(base, adapter)"
    )
    assert not (tmp_path / "out").exists()


def test_multi_adapter_save_is_one_repository_per_adapter(registry, base_dir, tmp_path):
    from peft import PeftModel

    first = make_adapter("lora", tmp_path / "first", base_dir, seed=3)
    second = make_adapter(
        "lora", tmp_path / "second", base_dir, seed=4, r=4, target_modules=["k_proj"]
    )
    model = PeftModel.from_pretrained(load_base(base_dir), str(first))
    model.load_adapter(str(second), adapter_name="chat")
    model.save_pretrained(tmp_path / "multi")
    assert (tmp_path / "multi" / "chat" / "adapter_config.json").is_file()

    result = registry.push(tmp_path / "multi", name="team/multi", tasks=["demo"])
    assert [result.card.repo, *(r.card.repo for r in result.others)] == [
        "team/multi",
        "team/multi-chat",
    ]
    assert (result.card.target_modules, result.others[0].card.target_modules) == (
        ["q_proj", "v_proj"],
        ["k_proj"],
    )
    assert [f.path for f in result.card.files] == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert result.card.size_bytes == sum(f.size for f in result.card.files)
    assert {c.repo for c in registry.search(tasks=["demo"])} == {"team/multi", "team/multi-chat"}
    for repo, original in (("team/multi", first), ("team/multi-chat", second)):
        pulled = registry.pull(repo, tmp_path / "pulled" / repo.split("/")[1])
        torch.testing.assert_close(
            _logits(_peft_model(base_dir, pulled), "lora"),
            _logits(_peft_model(base_dir, original), "lora"),
        )
    # A subfolder that is not a valid adapter stops the whole push before anything is stored.
    (tmp_path / "multi" / "chat" / "adapter_config.json").write_text("{}")
    with pytest.raises(Exception, match="field 'peft_type' is missing"):
        registry.push(tmp_path / "multi", name="team/other")
    assert registry.search("other") == []


def test_xlora_is_one_adapter_with_its_loras(registry, base_dir, tmp_path):
    """X-LoRA saves its LoRAs in subfolders: one adapter (not a multi-adapter save), whose
    card counts them and whose pull loads back with PEFT (which reads the LoRAs from the
    paths its config names: its own subfolders do not load back in PEFT 0.21.2)."""
    from peft import XLoraConfig, get_peft_model

    loras = {}
    for i, seed in enumerate((3, 4)):
        loras[str(i)] = str(make_adapter("lora", tmp_path / f"lora{i}", base_dir, seed=seed))
    model = load_base(base_dir)
    model.name_or_path = model.config._name_or_path = str(base_dir)
    model.config.use_cache = False
    config = XLoraConfig(
        task_type="CAUSAL_LM", hidden_size=64, xlora_depth=1, xlora_size=16, adapters=loras
    )
    get_peft_model(model, config).save_pretrained(tmp_path / "xlora")

    result = registry.push(tmp_path / "xlora", name="generic/xlora")
    assert result.others == []
    card = result.card
    assert (card.method, card.details["nested_adapters"]) == ("xlora", ["0", "1"])
    assert {f.path for f in card.files} >= {"0/adapter_model.safetensors", "1/adapter_config.json"}
    assert card.inference_overhead.none_when_merged is False
    trained = _peft_model(base_dir, tmp_path / "xlora", trainable=True)
    assert trained.get_nb_trainable_parameters()[0] < card.params_trainable
    # the ledger: its classifier, hidden 64 -> one logit per LoRA (depth 1): 64 x 2 + 2
    assert card.params_trained == 130 == trained.get_nb_trainable_parameters()[0]
    assert card.params_notes["params_trained"].startswith("X-LoRA trains only its classifier")
    assert card.params_changed_when_merged is None
    assert card.details["params_note"] == METHODS["xlora"].params_note
    pulled = registry.pull(card.ref, tmp_path / "pulled")
    for entry in card.files:
        assert (pulled / entry.path).read_bytes() == (tmp_path / "xlora" / entry.path).read_bytes()

    def seeded(folder, seed=0):
        torch.manual_seed(seed)  # PEFT 0.21.2 draws X-LoRA's classifier anew on every load
        return _logits(_peft_model(base_dir, folder), "xlora")

    torch.testing.assert_close(seeded(pulled), seeded(tmp_path / "xlora"))
    assert (seeded(tmp_path / "xlora", 1) - seeded(tmp_path / "xlora")).abs().max() > 1e-3
    with pytest.raises(IncompatibleAdapters, match="method xlora cannot be merged into weights"):
        _export(registry, card.ref, base_dir, tmp_path / "out")


def test_cli_push_of_a_multi_adapter_folder_and_peft_export_note(
    typed, registry, base_dir, tmp_path, hub_home
):
    from click.testing import CliRunner
    from peft import PeftModel

    from cli.main import cli

    first = make_adapter("lora", tmp_path / "first", base_dir, seed=3)
    model = PeftModel.from_pretrained(load_base(base_dir), str(first))
    model.load_adapter(str(make_adapter("lora", tmp_path / "b", base_dir, seed=5)), "sql")
    model.save_pretrained(tmp_path / "multi")
    runner = CliRunner()
    out = runner.invoke(cli, ["push", str(tmp_path / "multi"), "--name", "team/multi"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert [line.split("@")[0] for line in lines] == ["Pushed team/multi", "Pushed team/multi-sql"]
    out = runner.invoke(cli, ["push", str(tmp_path / "multi"), "--name", "team/multi", "--json"])
    body = json.loads(out.output)
    assert (body["created"], [o["repo"] for o in body["others"]]) == (False, ["team/multi-sql"])

    runner.invoke(cli, ["push", str(typed("hra")), "--name", "team/hra"], catch_exceptions=False)
    args = ["export", "team/hra", "--base", base_dir, "-o", tmp_path / "m", "--dtype", "fp16"]
    out = runner.invoke(cli, [str(a) for a in args])
    assert out.exit_code == 0, out.output
    assert (
        "Note: merged by PEFT's merge_and_unload, which holds the whole model in memory"
        in out.output.splitlines()
    )
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "float16"
