"""Stacks and ensembles: stored as composites, loaded ready, equal to running each adapter."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from compose import EnsembleModel
from schemas import IncompatibleAdapters
from tests.factories import load_base, make_adapter

# Stacks and ensembles are versions of the registry, read back from its store: on both
# deployments.
pytestmark = pytest.mark.usefixtures("deployment")

IDS = torch.tensor([[1, 5, 9, 42, 7, 3, 11]])


@pytest.fixture(scope="module")
def folders(tmp_path_factory, base_dir):
    root = tmp_path_factory.mktemp("composites")
    return {
        "lora": make_adapter("lora", root / "lora", base_dir, seed=21),
        "ia3": make_adapter("ia3", root / "ia3", base_dir, seed=22),
        "dora": make_adapter("dora", root / "dora", base_dir, seed=23),
        "p1": make_adapter("prompt_tuning", root / "p1", base_dir, seed=24),
        "p2": make_adapter("prompt_tuning", root / "p2", base_dir, seed=25),
        "p3": make_adapter("prompt_tuning", root / "p3", base_dir, seed=26),
    }


@pytest.fixture
def reg(registry, folders):
    for name, folder in folders.items():
        registry.push(folder, name=f"t/{name}")
    return registry


def _sequential(base_dir, folders):
    model = load_base(base_dir)
    for folder in folders:
        model = PeftModel.from_pretrained(model, str(folder))
        if "p" not in folder.name:
            model = model.merge_and_unload()
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def test_stack_applies_members_in_order(reg, folders, base_dir):
    card = reg.compose(
        {"operator": "stack", "name": "t/stack", "inputs": ["t/lora", "t/ia3", "t/dora"]}
    ).card
    assert card.method == "composite" and card.variant == "stack"
    assert card.details["members"] == [reg.show(f"t/{n}").ref for n in ("lora", "ia3", "dora")]
    assert card.details["member_methods"] == ["lora", "ia3", "lora"]
    assert card.inference_overhead.none_when_merged
    model = reg.load(load_base(base_dir), "t/stack")
    with torch.no_grad():
        got = model(input_ids=IDS).logits
    expected = _sequential(base_dir, [folders["lora"], folders["ia3"], folders["dora"]])
    assert torch.allclose(got, expected, atol=1e-5)
    reordered = _sequential(base_dir, [folders["dora"], folders["ia3"], folders["lora"]])
    assert not torch.allclose(got, reordered, atol=1e-4)  # order matters, and is kept
    assert reg.rebuild("t/stack").matches


def test_stack_with_a_final_prompt_adapter(reg, folders, base_dir):
    reg.compose({"operator": "stack", "name": "t/stack-p", "inputs": ["t/lora", "t/p1"]})
    model = reg.load(load_base(base_dir), "t/stack-p")
    with torch.no_grad():
        got = model(input_ids=IDS).logits
    assert torch.allclose(got, _sequential(base_dir, [folders["lora"], folders["p1"]]), atol=1e-5)
    with pytest.raises(IncompatibleAdapters) as info:
        reg.compose({"operator": "stack", "name": "t/bad", "inputs": ["t/p1", "t/lora"]})
    assert str(info.value) == (
        f"{reg.show('t/p1').ref} is a prompt_tuning adapter: it cannot be merged, so it can only"
        " be the last adapter of a stack"
    )


def test_stack_lineage_is_enforced(reg, folders, tmp_path):
    child = reg.push(folders["ia3"], name="t/child", parent="t/lora").card
    parent_ref = reg.show("t/lora").ref
    assert child.parent == parent_ref
    with pytest.raises(IncompatibleAdapters) as info:
        reg.compose({"operator": "stack", "name": "t/bad", "inputs": ["t/child", "t/lora"]})
    assert str(info.value) == (
        f"{child.ref} was trained on top of {parent_ref}; put {parent_ref} before it in the stack"
    )
    assert reg.compose(
        {"operator": "stack", "name": "t/ok", "inputs": ["t/lora", "t/child"]}
    ).created
    with pytest.raises(IncompatibleAdapters):
        reg.compose({"operator": "stack", "name": "t/bad", "inputs": ["t/child"]})


def _separate_logprobs(base_dir, folders, ids=IDS):
    """Each prompt adapter run on its own through PEFT, log-probs stacked (members first)."""
    out = []
    for folder in folders:
        model = PeftModel.from_pretrained(load_base(base_dir), str(folder)).eval()
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, 5:]  # drop the 5 virtual tokens
        out.append(torch.log_softmax(logits.float(), dim=-1))
    return torch.stack(out)


def test_ensemble_averages_log_probabilities_of_separate_runs(reg, folders, base_dir):
    card = reg.compose(
        {"operator": "ensemble", "name": "t/ens", "inputs": ["t/p1", "t/p2", "t/p3"]}
    ).card
    assert card.variant == "ensemble"
    assert card.inference_overhead.model_dump() == {
        "none_when_merged": False,
        "extra_tokens": 15,
        "extra_layers": 0,
    }
    ensemble = reg.load(load_base(base_dir), "t/ens")
    assert isinstance(ensemble, EnsembleModel)
    prompts = [folders[p] for p in ("p1", "p2", "p3")]
    separate = _separate_logprobs(base_dir, prompts)
    assert torch.allclose(ensemble.member_logprobs(IDS)[:, 0], separate[:, 0], atol=1e-5)
    mean = separate.mean(dim=0)
    assert torch.allclose(ensemble.logprobs(IDS), mean, atol=1e-5)

    prompt, choices = IDS[:, :4], [[7], [99], [3, 11]]
    scores = []
    for choice in choices:
        ids = torch.cat([prompt, torch.tensor([choice])], dim=1)
        lp = _separate_logprobs(base_dir, prompts, ids).mean(dim=0)[0]
        scores.append(sum(float(lp[3 + i, t]) for i, t in enumerate(choice)))
    assert ensemble.score(prompt, choices[2]) == pytest.approx(scores[2], abs=1e-4)
    # The batched run agrees with the separate ones within 1e-4 per score, so its choice is
    # the best one or one within 2e-4 of it (a near-tie either side of which rounding lands).
    assert scores[ensemble.classify(prompt, choices)] >= max(scores) - 2e-4
    generated = ensemble.generate(prompt, max_new_tokens=3)
    assert generated.shape == (1, 7)
    last = _separate_logprobs(base_dir, prompts, prompt).mean(0)[0, -1]
    assert float(last[int(generated[0, 4])]) >= float(last.max()) - 2e-5  # greedy, within 1e-5


def test_ensemble_average_writes_one_prompt_adapter(reg, folders, base_dir, tmp_path):
    card = reg.compose(
        {"operator": "ensemble", "name": "t/avg", "inputs": ["t/p1", "t/p2"], "average": True}
    ).card
    assert card.method == "prompt_tuning" and card.rank == 5
    from safetensors.torch import load_file

    pulled = reg.pull(card.ref, tmp_path / "avg")
    mean = (
        load_file(folders["p1"] / "adapter_model.safetensors")["prompt_embeddings"]
        + load_file(folders["p2"] / "adapter_model.safetensors")["prompt_embeddings"]
    ) / 2
    assert torch.allclose(
        load_file(pulled / "adapter_model.safetensors")["prompt_embeddings"], mean, atol=1e-7
    )
    model = PeftModel.from_pretrained(load_base(base_dir), str(pulled))  # loads in PEFT as is
    assert model(input_ids=IDS).logits.shape[1] == IDS.shape[1] + 5


def test_ensemble_refuses_non_prompt_members(reg):
    with pytest.raises(IncompatibleAdapters) as info:
        reg.compose({"operator": "ensemble", "name": "t/bad", "inputs": ["t/p1", "t/lora"]})
    assert str(info.value) == (
        f"{reg.show('t/lora').ref} is a lora adapter; `ensemble` takes p_tuning, prompt_tuning"
        " adapters"
    )


def test_exporting_a_stack_merges_members_in_order(reg, folders, base_dir, tmp_path):
    reg.compose({"operator": "stack", "name": "t/stack2", "inputs": ["t/lora", "t/ia3"]})
    out = tmp_path / "merged"
    reg.export(
        "t/stack2",
        base=str(base_dir),
        output=out,
        format="safetensors",
        dtype="fp32",
        progress=False,
    )
    model = load_base(out)
    with torch.no_grad():
        got = model(input_ids=IDS).logits
    assert torch.allclose(got, _sequential(base_dir, [folders["lora"], folders["ia3"]]), atol=1e-4)
