"""AdapterHub adapters end to end: real ``adapters`` saves pushed, carded, pulled byte for byte
and loaded back by ``adapters`` with the same outputs; pickle saves refused and converted;
``hub ls --library``; merged export refused; a stack run through adapters' ``Stack`` block.

Every adapter is built by ``adapters`` itself (``add_adapter`` + ``train_adapter`` + values
moved off their initialisation + ``save_adapter``) on tiny BERT- and Llama-style bases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from hub.convert import convert_adapter
from schemas.errors import IncompatibleAdapters, UnsafeFormat
from tests.adapterhub.factories import SAFETENSORS_REFUSED, Saved, make_adapter, reload_logits

HIDDEN = 64
LAYERS = 2
# kind -> (method, variant, rank, placement, non_linearity, extra_tokens, extra_layers), each
# from the config built in factories.configs(): rank = hidden 64 // reduction_factor.
EXPECTED: dict[str, tuple[Any, ...]] = {
    "houlsby": ("bottleneck", "houlsby", 64 // 16, ["after_attention", "after_ffn"], "swish",
                0, 2 * LAYERS),
    "pfeiffer": ("bottleneck", "pfeiffer", 64 // 8, ["after_ffn"], "relu", 0, LAYERS),
    "parallel": ("bottleneck", "parallel", 64 // 4, ["parallel_ffn"], "relu", 0, LAYERS),
    "compacter": ("bottleneck", "compacter", 64 // 8, ["after_attention", "after_ffn"],
                  "gelu", 0, 2 * LAYERS),
    "prefix": ("prefix_tuning", None, 6, None, "tanh", 6, 0),
    "lora": ("lora", None, 4, None, None, 0, 2 * LAYERS),
    "ia3": ("ia3", None, None, None, None, 0, 3 * LAYERS),
    # MAM: prefix tuning (30 tokens) + a parallel bottleneck of reduction factor 2.
    "mam": ("union", "mam", 64 // 2, ["parallel_ffn"], "relu", 30, LAYERS),
    # UniPELT: gated prefix (10 tokens) + gated Pfeiffer bottleneck (16) + gated LoRA on q, v.
    "unipelt": ("union", "unipelt", 64 // 16, ["after_ffn"], "relu", 10, LAYERS + 2 * LAYERS),
}  # fmt: skip
LORA_TARGETS = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj"]}


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


# save_adapter of a model without flexible heads writes the model's own head beside the
# adapter (a LlamaForCausalLM's lm_head); BertAdapterModel without a head writes none.
STATIC_HEAD = {"bert": [], "llama": ["head_config.json", "model_head.safetensors"]}


def _pushable(saved: Saved, kind: str, base_kind: str) -> Path:
    """The folder to push: adapters' own save, or (for what adapters 1.3.0 can only pickle)
    the push's refusal checked, then ``hub convert``'s output."""
    if kind not in SAFETENSORS_REFUSED:
        assert sorted(_files(saved.folder)) == sorted(
            ["adapter.safetensors", "adapter_config.json", *STATIC_HEAD[base_kind]]
        )
        return saved.folder
    from hub.inspect import inspect_adapter

    with pytest.raises(UnsafeFormat) as info:
        inspect_adapter(saved.folder)
    assert str(info.value) == (
        f"{saved.folder / 'pytorch_adapter.bin'} is a pickle file, which hub never loads (it can"
        f" run code): convert it safely with `hub convert {saved.folder}` (adapters 1.3.0 cannot"
        " save prefix tuning with use_safetensors=True: the prefix pool is shared by every"
        " layer)"
    )
    return convert_adapter(saved.folder).path


@pytest.mark.parametrize("base_kind", ["bert", "llama"])
@pytest.mark.parametrize("kind", list(EXPECTED))
def test_push_card_pull_load(registry, bases, tmp_path, base_kind, kind):
    base = bases[base_kind]
    saved = make_adapter(kind, base, tmp_path / kind)
    folder = _pushable(saved, kind, base_kind)
    card = registry.push(folder, name=f"ah/{base_kind}-{kind}").card

    method, variant, rank, placement, non_linearity, tokens, layers = EXPECTED[kind]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (card.library, card.method, card.variant, card.rank) == (
        "adapters",
        method,
        variant,
        rank,
    )
    assert card.details.get("placement") == placement
    assert card.details.get("non_linearity") == non_linearity
    assert card.details["adapter_name"] == config["name"] == kind
    assert card.details["hidden_size"] == HIDDEN
    assert card.details["layers"] == list(range(LAYERS))
    assert card.inference_overhead.model_dump() == {
        "none_when_merged": kind in ("lora", "ia3"),
        "extra_tokens": tokens,
        "extra_layers": layers,
    }
    # adapters' own count: the values train_adapter leaves trainable (prefix pool once).
    assert card.params_trainable == saved.trainable
    _check_ledger(card, saved, base, kind)
    if method == "union":
        parts = [p["method"] for p in card.details["parts"]]
        assert parts == [c.get("architecture") or "bottleneck" for c in config["config"]["configs"]]
    if base_kind == "llama":  # lm_head, 128 x 64, listed apart and not counted
        assert card.details["head"] == {
            "head_type": "static",
            "files": ["head_config.json", "model_head.safetensors"],
            "params": 128 * 64,
        }
    else:
        assert "head" not in card.details
    if kind == "lora":
        assert card.alpha == 8.0 and card.target_modules == LORA_TARGETS[base_kind]
    if kind == "compacter":
        assert card.details["phm"]["phm_dim"] == config["config"]["phm_dim"] == 4

    pulled = registry.pull(card.ref, tmp_path / "pulled")
    assert _files(pulled) == _files(folder)
    # The pulled folder, loaded by adapters on a fresh base, gives the saving model's outputs;
    # and the adapter changes them (else the comparison would check nothing).
    from tests.adapterhub.factories import load_base, outputs

    torch.testing.assert_close(reload_logits(base, [pulled]), saved.logits, atol=1e-5, rtol=1e-5)
    assert (outputs(load_base(base)) - saved.logits).abs().max() > 1e-3


def _check_ledger(card, saved: Saved, base: Path, kind: str) -> None:
    """The ledger against the model adapters loads the save into: trained and read at
    inference are the adapter's parameters there (a shared prefix pool once); a merge of a
    LoRA / IA3 rewrites the whole weight of every module adapters put it on."""
    import adapters

    from tests.adapterhub.factories import load_base

    model = load_base(base)
    if not isinstance(model, adapters.ModelAdaptersMixin):
        adapters.init(model)
    pickled = not (saved.folder / "adapter.safetensors").is_file()  # prefix, MAM, UniPELT
    model.load_adapter(str(saved.folder), load_as="x", with_head=False, use_safetensors=not pickled)
    own = sum(p.numel() for n, p in model.named_parameters() if ".x." in f".{n}.")
    assert card.params_trained == card.params_stored == card.params_extra_at_inference == own
    base_params = sum(p.numel() for p in load_base(base).parameters())
    assert card.params_base is not None and card.params_base <= base_params
    assert card.params_extra_at_inference_fraction == pytest.approx(own / card.params_base)
    adapted = [m for m in model.modules() if "x" in getattr(m, "loras", {})]
    if kind in ("lora", "ia3"):
        assert card.params_changed_when_merged == sum(m.weight.numel() for m in adapted) > 0
        assert card.params_unknown == {}
    elif kind == "prefix":  # key/value positions: no base weight changes
        assert card.params_changed_when_merged == 0
    else:
        assert card.params_changed_when_merged is None
        why = card.params_unknown["params_changed_when_merged"]
        assert why.startswith("it cannot be merged into the base weights: its ")
    if kind == "houlsby":
        assert card.params_unknown == {
            "params_changed_when_merged": "it cannot be merged into the base weights: its"
            " houlsby bottleneck applies a non-linearity (swish) between the down and up"
            " projections (it runs unmerged only)"
        }


def test_pickle_save_is_refused_with_both_routes(registry, bases, tmp_path):
    saved = make_adapter("pfeiffer", bases["llama"], tmp_path / "pickled", safetensors=False)
    assert sorted(_files(saved.folder)) == [
        "adapter_config.json", "head_config.json", "pytorch_adapter.bin", "pytorch_model_head.bin"
    ]  # fmt: skip
    result = CliRunner().invoke(cli, ["push", str(saved.folder), "--name", "ah/pickled"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"Error: {saved.folder / 'pytorch_adapter.bin'} is a pickle file, which hub never loads"
        f" (it can run code): convert it safely with `hub convert {saved.folder}`, or save it"
        " again with `model.save_adapter(DIR, NAME, use_safetensors=True)`"
    )
    assert registry.search_raw() == []

    result = CliRunner().invoke(cli, ["convert", str(saved.folder)])
    assert result.exit_code == 0, result.output
    converted = tmp_path / "pickled-safetensors"
    assert result.output == f"Wrote {converted}\n"
    assert sorted(_files(converted)) == [
        "adapter.safetensors", "adapter_config.json", "head_config.json", "model_head.safetensors"
    ]  # fmt: skip
    card = registry.push(converted, name="ah/pickled").card
    assert (card.method, card.variant, card.params_trainable) == (
        "bottleneck",
        "pfeiffer",
        saved.trainable,
    )
    pulled = registry.pull(card.ref, tmp_path / "pulled")
    torch.testing.assert_close(
        reload_logits(bases["llama"], [pulled]), saved.logits, atol=1e-5, rtol=1e-5
    )


def test_head_is_listed_apart_and_loads_with_the_adapter(registry, bases, tmp_path):
    saved = make_adapter("pfeiffer", bases["bert"], tmp_path / "with-head", head=True)
    files = _files(saved.folder)
    assert sorted(files) == [
        "adapter.safetensors", "adapter_config.json", "head_config.json", "model_head.safetensors"
    ]  # fmt: skip
    card = registry.push(saved.folder, name="ah/with-head").card
    # A 2-layer classification head on a 64-wide model: 64x64 + 64, then 3x64 + 3.
    head_params = 64 * 64 + 64 + 3 * 64 + 3
    assert card.details["head"] == {
        "name": "pfeiffer",
        "head_type": "classification",
        "num_labels": 3,
        "files": ["head_config.json", "model_head.safetensors"],
        "params": head_params,
    }
    # train_adapter trains the head of the adapter's name too; the card counts it apart.
    assert card.params_trainable + head_params == saved.trainable
    assert saved.logits.shape == (2, 3)
    pulled = registry.pull(card.ref, tmp_path / "pulled")
    assert _files(pulled) == files
    torch.testing.assert_close(
        reload_logits(bases["bert"], [pulled]), saved.logits, atol=1e-5, rtol=1e-5
    )


def test_ls_by_library(registry, bases, tmp_path, hub_home):
    from tests.factories import make_adapter as make_peft_adapter
    from tests.factories import make_base as make_peft_base

    # The project's PEFT path under transformers 4.57 (this environment) too.
    peft_base = make_peft_base(tmp_path / "peft-base")
    registry.push(make_peft_adapter("lora", tmp_path / "peft-lora", peft_base), name="a/peft")
    saved = make_adapter("houlsby", bases["llama"], tmp_path / "houlsby")
    registry.push(saved.folder, name="a/houlsby")

    def ls(*args):
        result = CliRunner().invoke(cli, ["--home", str(hub_home), "ls", *args, "--json"])
        assert result.exit_code == 0, result.output
        return [(c["repo"], c["library"], c["method"]) for c in json.loads(result.output)]

    assert ls("--library", "adapters") == [("a/houlsby", "adapters", "bottleneck")]
    assert ls("--library", "peft") == [("a/peft", "peft", "lora")]
    assert ls("--method", "bottleneck") == [("a/houlsby", "adapters", "bottleneck")]
    assert ls("--rank", "4") == [("a/houlsby", "adapters", "bottleneck")]


def test_merged_export_is_refused_with_the_reason(registry, bases, tmp_path, hub_home):
    saved = make_adapter("houlsby", bases["llama"], tmp_path / "houlsby")
    card = registry.push(saved.folder, name="a/houlsby").card
    out = tmp_path / "merged"
    result = CliRunner().invoke(
        cli,
        ["--home", str(hub_home), "export", card.ref, "--base", str(bases["llama"]), "-o",
         str(out), "--format", "safetensors"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"Error: adapter {card.ref} is an AdapterHub adapter and cannot be exported merged: its"
        " bottleneck applies a non-linearity (swish) between the down and up projections, so no"
        " weight of the base can absorb it. Deploy it unmerged: `hub pull REF -o DIR`, then"
        " adapters' model.load_adapter(DIR, use_safetensors=True) on the base (or Registry.load)"
    )
    assert not out.exists()


def test_stack_runs_through_adapters_stack_block(registry, bases, tmp_path):
    from adapters.composition import Stack

    from tests.adapterhub.factories import load_base, outputs

    base = bases["llama"]
    language = make_adapter("pfeiffer", base, tmp_path / "lang", seed=3)
    task = make_adapter("houlsby", base, tmp_path / "task", seed=4)
    refs = [
        registry.push(language.folder, name="mad/lang").card.ref,
        registry.push(task.folder, name="mad/task").card.ref,
    ]
    stacked = registry.compose({"operator": "stack", "name": "mad/lang-task", "inputs": refs})
    assert stacked.card.method == "composite"
    model = registry.load(load_base(base), "mad/lang-task")
    assert [str(name) for name in model.active_adapters] == ["hub_0", "hub_1"]
    got = outputs(model)

    # adapters itself, on the original saves: language adapter, then task adapter.
    reference = load_base(base)
    import adapters

    adapters.init(reference)
    reference.load_adapter(str(language.folder), load_as="lang", use_safetensors=True)
    reference.load_adapter(str(task.folder), load_as="task", use_safetensors=True)
    reference.set_active_adapters(Stack("lang", "task"))
    torch.testing.assert_close(got, outputs(reference), atol=1e-5, rtol=1e-5)
    # The order matters and both adapters act: neither one alone, nor the reverse order.
    for other in (language.logits, task.logits):
        assert (got - other).abs().max() > 1e-3
    reference.set_active_adapters(Stack("task", "lang"))
    assert (got - outputs(reference)).abs().max() > 1e-4


def test_merge_operators_refuse_adapterhub_adapters(registry, bases, tmp_path):
    saved = make_adapter("lora", bases["llama"], tmp_path / "lora")
    ref = registry.push(saved.folder, name="a/ah-lora").card.ref
    with pytest.raises(IncompatibleAdapters) as info:
        registry.compose({"operator": "linear", "name": "a/merged", "inputs": [ref, ref]})
    assert str(info.value) == (
        f"{ref} is an AdapterHub lora adapter: it composes only as a stack (adapters' own Stack"
        " block) or, a bottleneck, as an average (adapters' average_adapter); `linear` works on"
        " PEFT adapters' tensors"
    )
    assert [c["repo"] for c in registry.search_raw()] == ["a/ah-lora"]


def test_eval_runs_through_adapters_and_is_recorded(registry, tmp_path):
    from tests.compose.deploy.models import make_base
    from tests.hub.trained import HELD_OUT

    base = make_base(tmp_path / "base", tokenizer="bpe")
    saved = make_adapter("houlsby", base, tmp_path / "houlsby")
    card = registry.push(saved.folder, name="ah/eval").card
    data = tmp_path / "held-out.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in HELD_OUT))

    (record,) = registry.evaluate(card.ref, data, base=base)
    assert record["commit"] == card.commit
    assert record["dataset"]["rows"] == len(HELD_OUT)
    adapter, plain = record["metrics"]["cross_entropy"], record["base"]["metrics"]["cross_entropy"]
    # The perturbed bottleneck changes the model, so the scores differ from the base's, and
    # the recorded delta is their difference.
    assert abs(adapter["value"] - plain["value"]) > 1e-3
    assert record["delta"]["cross_entropy"]["value"] == pytest.approx(
        adapter["value"] - plain["value"], abs=1e-9
    )
    assert record["versions"]["adapters"] == "1.3.0"
    assert registry.evals(card.ref)[0]["id"] == record["id"]
    assert registry.show(card.ref).metric("cross_entropy") == pytest.approx(adapter["value"])


def test_team_server_push_search_and_pull(live_server, tokens, bases, tmp_path):
    from hub.remote import RemoteRegistry

    saved = make_adapter("compacter", bases["bert"], tmp_path / "compacter")
    writer = RemoteRegistry(live_server.url, tokens["writer"])
    card, created = writer.push(saved.folder, name="team/compacter")
    assert created
    assert (card.library, card.method, card.variant) == ("adapters", "bottleneck", "compacter")

    reader = RemoteRegistry(live_server.url, tokens["reader"])
    assert [c["repo"] for c in reader.search_raw(library="adapters")] == ["team/compacter"]
    assert reader.search_raw(library="peft") == []
    pulled = reader.pull(card.ref, tmp_path / "pulled")
    assert _files(pulled) == _files(saved.folder)
    torch.testing.assert_close(
        reload_logits(bases["bert"], [pulled]), saved.logits, atol=1e-5, rtol=1e-5
    )


def test_show_names_library_placement_and_overhead(registry, bases, tmp_path, hub_home):
    saved = make_adapter("houlsby", bases["bert"], tmp_path / "houlsby")
    registry.push(saved.folder, name="a/houlsby")
    result = CliRunner().invoke(cli, ["--home", str(hub_home), "show", "a/houlsby"])
    assert result.exit_code == 0, result.output
    lines = {line.split("  ", 1)[0]: line.split("  ", 1)[1].strip() for line in
             result.output.splitlines() if "  " in line and not line.startswith(" ")}  # fmt: skip
    assert lines["method"] == "bottleneck:houlsby"
    assert lines["library"] == "adapters"
    assert lines["rank"] == "4"
    assert lines["placement"] == "after_attention, after_ffn"
    assert lines["overhead"] == "4 extra modules per forward pass (not mergeable)"
