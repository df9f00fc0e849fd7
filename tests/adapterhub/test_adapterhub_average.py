"""``hub compose average`` of AdapterHub bottleneck adapters, through adapters' own
``average_adapter``: stored as an ordinary AdapterHub save with its recipe and exact inputs,
loaded back with the outputs of adapters' own averaged adapter; refused, with the reason, for
what it cannot average."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from schemas.errors import IncompatibleAdapters
from tests.adapterhub.factories import load_base, make_adapter, outputs, reload_logits


def _reference(base: Path, folders: list[Path], weights: list[float]) -> torch.Tensor:
    """adapters itself: both saves loaded, averaged with average_adapter, the average run."""
    import adapters

    model = load_base(base)
    if not isinstance(model, adapters.ModelAdaptersMixin):
        adapters.init(model)
    names = [model.load_adapter(str(f), load_as=f"in{i}", use_safetensors=True, with_head=False)
             for i, f in enumerate(folders)]  # fmt: skip
    model.average_adapter("avg", names, weights=weights, normalize_weights=False)
    model.set_active_adapters("avg")
    return outputs(model.eval())


@pytest.mark.parametrize(("base_kind", "kind"), [("llama", "pfeiffer"), ("bert", "compacter")])
def test_average_matches_adapters_average_adapter(registry, bases, tmp_path, base_kind, kind):
    base = bases[base_kind]
    first = make_adapter(kind, base, tmp_path / "a", seed=3)
    second = make_adapter(kind, base, tmp_path / "b", seed=4)
    refs = [
        registry.push(first.folder, name="bn/a").card.ref,
        registry.push(second.folder, name="bn/b").card.ref,
    ]
    weights = [0.25, 0.75]
    result = registry.compose(
        {"operator": "average", "name": "bn/avg", "inputs": refs, "weights": weights}
    )
    card = result.card
    # An ordinary AdapterHub save (what average_adapter + save_adapter write), carded as one.
    assert (card.library, card.method, card.variant) == ("adapters", "bottleneck", kind)
    assert card.base_model == str(base)
    assert [f.path for f in card.files] == ["adapter.safetensors", "adapter_config.json"]
    assert card.details["adapter_name"] == "average"
    assert card.lineage is not None and card.lineage.inputs == refs
    assert card.lineage.recipe["operator"] == "average"
    assert card.lineage.recipe["weights"] == weights
    assert card.params_stored == registry.show("bn/a").params_stored

    # Loaded back (pulled, and through Registry.load): adapters' own averaged adapter.
    expected = _reference(base, [first.folder, second.folder], weights)
    pulled = registry.pull(card.ref, tmp_path / "pulled")
    torch.testing.assert_close(reload_logits(base, [pulled]), expected, atol=1e-5, rtol=1e-5)
    loaded = registry.load(load_base(base), card.ref)
    torch.testing.assert_close(outputs(loaded), expected, atol=1e-5, rtol=1e-5)
    # The average is neither input (else the comparison would check nothing).
    for single in (first.logits, second.logits):
        assert (expected - single).abs().max() > 1e-3
    # Rebuilt from its recipe and exact inputs: the same files.
    assert registry.rebuild(card.ref).matches


def test_average_from_the_cli_defaults_to_the_mean(registry, bases, tmp_path, hub_home):
    base = bases["llama"]
    folders = [make_adapter("houlsby", base, tmp_path / n, seed=s).folder
               for n, s in (("a", 5), ("b", 6), ("c", 7))]  # fmt: skip
    for i, folder in enumerate(folders):
        registry.push(folder, name=f"bn/h{i}")
    result = CliRunner().invoke(
        cli,
        ["--home", str(hub_home), "compose", "average", "bn/h0", "bn/h1", "bn/h2", "--name",
         "bn/mean", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    card = registry.show("bn/mean")
    assert card.lineage.recipe["weights"] == [1 / 3] * 3
    torch.testing.assert_close(
        reload_logits(base, [registry.pull(card.ref, tmp_path / "pulled")]),
        _reference(base, folders, [1 / 3] * 3),
        atol=1e-5,
        rtol=1e-5,
    )


def test_average_refuses_what_average_adapter_cannot_average(registry, bases, tmp_path):
    from adapters import SeqBnConfig

    from tests.factories import make_adapter as make_peft_adapter
    from tests.factories import make_base as make_peft_base

    base = bases["llama"]
    pfeiffer = registry.push(make_adapter("pfeiffer", base, tmp_path / "p8").folder,
                             name="bn/p8").card.ref  # fmt: skip
    other = make_adapter(
        "pfeiffer", base, tmp_path / "p16", config=SeqBnConfig(reduction_factor=16)
    )
    p16 = registry.push(other.folder, name="bn/p16").card.ref
    lora = registry.push(make_adapter("lora", base, tmp_path / "lora").folder, name="bn/lora")
    peft_base = make_peft_base(tmp_path / "peft-base")
    peft = registry.push(make_peft_adapter("lora", tmp_path / "peft", peft_base), name="bn/peft")
    before = [c["repo"] for c in registry.search_raw()]

    def refusal(*refs: str) -> str:
        with pytest.raises(IncompatibleAdapters) as info:
            registry.compose({"operator": "average", "name": "bn/avg", "inputs": list(refs)})
        return str(info.value)

    assert refusal(pfeiffer, p16) == (
        f"{p16} has reduction_factor=16 but {pfeiffer} reduction_factor=8: average_adapter"
        " averages adapters of one config, tensor by tensor"
    )
    assert refusal(pfeiffer, lora.card.ref) == (
        f"{lora.card.ref} is an AdapterHub lora adapter; `average` averages AdapterHub"
        " bottleneck adapters (adapters' average_adapter, a weighted sum of their tensors)"
    )
    assert refusal(peft.card.ref, peft.card.ref) == (
        f"{peft.card.ref} is a PEFT lora adapter; `average` averages AdapterHub bottleneck"
        " adapters (adapters' average_adapter): merge PEFT adapters with `linear`, `svd` or"
        " `ties`"
    )
    # A PEFT merge operator still refuses AdapterHub adapters, naming both routes.
    with pytest.raises(IncompatibleAdapters) as info:
        registry.compose({"operator": "ties", "name": "bn/t", "inputs": [pfeiffer, pfeiffer],
                          "density": 0.5})  # fmt: skip
    assert "or, a bottleneck, as an average (adapters' average_adapter)" in str(info.value)
    assert [c["repo"] for c in registry.search_raw()] == before
    assert (
        json.loads((other.folder / "adapter_config.json").read_text())["config"]["reduction_factor"]
        == 16
    )
