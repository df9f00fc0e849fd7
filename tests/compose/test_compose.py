"""Compose end to end: registry inputs -> operator -> new version -> PEFT loads it and it
behaves exactly like the reference math applied to the base weights."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from peft.utils import merge_utils

from cli.main import cli
from compose.reproduce import compare_folders
from schemas import IncompatibleAdapters, InvalidRecipe
from tests.factories import load_base, make_adapter, make_base, peft_logits

IDS = torch.tensor([[1, 5, 9, 42, 7, 3, 11]])


# Compose reads its inputs from the store and writes the result back: on both deployments.
pytestmark = pytest.mark.usefixtures("deployment")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, base_dir):
    root = tmp_path_factory.mktemp("compose-inputs")
    return {
        "a": make_adapter("lora", root / "a", base_dir, seed=11),
        "b": make_adapter(
            "lora",
            root / "b",
            base_dir,
            seed=12,
            r=4,
            lora_alpha=4,
            target_modules=["q_proj", "k_proj"],
        ),
        "rs": make_adapter(
            "lora",
            root / "rs",
            base_dir,
            seed=13,
            use_rslora=True,
            rank_pattern={"v_proj": 2},
            alpha_pattern={"q_proj": 3},
        ),
        "dora": make_adapter("dora", root / "dora", base_dir, seed=14),
        "ia3": make_adapter("ia3", root / "ia3", base_dir, seed=15),
        "ia3b": make_adapter("ia3", root / "ia3b", base_dir, seed=16),
        "loha": make_adapter("loha", root / "loha", base_dir, seed=17),
    }


@pytest.fixture
def reg(registry, inputs):
    for name in ("a", "b", "rs", "dora", "ia3", "ia3b", "loha"):
        registry.push(inputs[name], name=f"t/{name}")
    return registry


def _peft_deltas(base_dir, folder):
    """Each adapted module's delta as PEFT itself computes it (fp64)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(base_dir), str(folder))
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            out[name.removeprefix("base_model.model.")] = module.get_delta_weight(
                "default"
            ).double()
    return out


def _logits_with(base_dir, deltas):
    model = load_base(base_dir)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for module, delta in deltas.items():
            weight = params[f"{module}.weight"]
            weight.copy_((weight.double() + delta).float())
        return model(input_ids=IDS).logits


def _truncate(delta, rank):
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def _weighted_sum(parts, weights):
    keys = sorted({k for p in parts for k in p})
    return {k: sum(w * p[k] for p, w in zip(parts, weights, strict=True) if k in p) for k in keys}


@pytest.mark.parametrize("rank", [None, 5])
def test_linear_and_svd_match_reference_math(reg, inputs, base_dir, tmp_path, rank):
    weights = [0.7, -0.4, 1.3]
    refs = ["t/a", "t/b", "t/rs"]
    op = "linear" if rank is None else "svd"
    recipe = {"operator": op, "name": "t/out", "inputs": refs, "weights": weights}
    if rank is not None:
        recipe["rank"] = rank
    card = reg.compose(recipe).card
    exact = _weighted_sum([_peft_deltas(base_dir, inputs[k]) for k in ("a", "b", "rs")], weights)
    expected = exact if rank is None else {k: _truncate(v, rank) for k, v in exact.items()}
    pulled = reg.pull(card.ref, tmp_path / "out")
    assert torch.allclose(
        peft_logits(base_dir, pulled, IDS), _logits_with(base_dir, expected), atol=2e-5
    )
    assert card.rank == (20 if rank is None else 5)  # q_proj: 8 + 4 + 8 in cat
    assert card.target_modules == ["k_proj", "q_proj", "v_proj"]
    assert card.lineage.inputs == [reg.show(r).ref for r in refs]
    assert card.lineage.recipe["operator"] == op
    if rank is not None:
        energies = card.details["module_energy"]
        assert len(energies) == 6  # 2 layers x (q, k, v)
        module = "model.layers.0.self_attn.q_proj"
        s = torch.linalg.svdvals(exact[module])
        assert energies[module] == pytest.approx(float((s[:5] ** 2).sum() / (s**2).sum()), 1e-6)
        assert 0 < card.details["retained_energy"] < 1
    assert reg.rebuild(card.ref).matches


@pytest.mark.parametrize(
    ("op", "extra"),
    [("ties", {"density": 0.4}), ("magnitude-prune", {"density": 0.5}), ("ties", {"density": 1.0})],
)
def test_sparsifying_operators_match_peft_then_factor(reg, inputs, base_dir, tmp_path, op, extra):
    weights = [1.0, 0.5]
    card = reg.compose(
        {
            "operator": op,
            "name": "t/sparse",
            "inputs": ["t/a", "t/b"],
            "weights": weights,
            "rank": 8,
            **extra,
        }
    ).card
    deltas = [_peft_deltas(base_dir, inputs[k]) for k in ("a", "b")]
    peer = merge_utils.ties if op == "ties" else merge_utils.magnitude_prune
    expected = {}
    for module in sorted(set(deltas[0]) | set(deltas[1])):
        like = next(d[module] for d in deltas if module in d)
        per_input = [d.get(module, torch.zeros_like(like)).float() for d in deltas]
        merged = peer(per_input, torch.tensor(weights), extra["density"]).double()
        expected[module] = _truncate(merged, 8)
    pulled = reg.pull(card.ref, tmp_path / "out")
    assert torch.allclose(
        peft_logits(base_dir, pulled, IDS), _logits_with(base_dir, expected), atol=2e-5
    )


def _agree(reg, one, two, tmp_path):
    """Two composites hold the same adapter: what ``hub verify --rebuild`` accepts (tensors
    within the rounding bound, configs byte for byte). The README names the result, so it
    differs and is left out."""
    checks = compare_folders(reg.pull(one, tmp_path / "one"), reg.pull(two, tmp_path / "two"))
    return {c.path: c.ok for c in checks if c.path != "README.md"} == {
        "adapter_config.json": True,
        "adapter_model.safetensors": True,
    }


def test_dare_is_seeded_and_rebuilds(reg, tmp_path):
    recipe = {
        "operator": "dare",
        "name": "t/dare",
        "inputs": ["t/a", "t/b"],
        "density": 0.5,
        "seed": 3,
        "variant": "ties",
    }
    first = reg.compose(recipe).card
    reg.compose({**recipe, "name": "t/dare2"})
    assert _agree(reg, "t/dare", "t/dare2", tmp_path / "same")
    reg.compose({**recipe, "name": "t/dare3", "seed": 4})
    assert not _agree(reg, "t/dare", "t/dare3", tmp_path / "other")  # other drops
    assert first.lineage.recipe["seed"] == 3 and first.lineage.recipe["variant"] == "ties"
    assert reg.rebuild("t/dare").matches


def test_ia3_linear_merges_scaling_offsets(reg, inputs, base_dir, tmp_path):
    card = reg.compose(
        {
            "operator": "linear",
            "name": "t/ia3-sum",
            "inputs": ["t/ia3", "t/ia3b"],
            "weights": [1.0, 1.0],
        }
    ).card
    assert card.method == "ia3"
    from safetensors.torch import load_file

    one = load_file(inputs["ia3"] / "adapter_model.safetensors")
    two = load_file(inputs["ia3b"] / "adapter_model.safetensors")
    merged = load_file(reg.pull(card.ref, tmp_path / "ia3") / "adapter_model.safetensors")
    for key, vector in merged.items():
        assert torch.allclose(vector, 1 + (one[key] - 1) + (two[key] - 1), atol=1e-6)
    single = reg.compose({"operator": "linear", "name": "t/ia3-one", "inputs": ["t/ia3"]}).card
    # 1 + 1 * (l - 1) is exact in fp64 for an fp32 l, so one input is reproduced bit for bit.
    assert torch.equal(
        load_file(reg.pull(single.ref, tmp_path / "one") / "adapter_model.safetensors")[key],
        one[key],
    )


def test_loha_composes_through_its_dense_delta(reg, inputs, base_dir, tmp_path):
    card = reg.compose(
        {"operator": "svd", "name": "t/mix", "inputs": ["t/a", "t/loha"], "rank": 12}
    ).card
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(base_dir), str(inputs["loha"]))
    loha = {
        n.removeprefix("base_model.model."): m.get_delta_weight("default").double()
        for n, m in model.named_modules()
        if hasattr(m, "hada_w1_a") and "default" in m.hada_w1_a
    }
    exact = _weighted_sum([_peft_deltas(base_dir, inputs["a"]), loha], [1.0, 1.0])
    expected = {k: _truncate(v, 12) for k, v in exact.items()}
    pulled = reg.pull(card.ref, tmp_path / "out")
    assert torch.allclose(
        peft_logits(base_dir, pulled, IDS), _logits_with(base_dir, expected), atol=2e-5
    )


def _nothing_written(reg, before):
    assert [c["repo"] for c in reg.search_raw(all_versions=True)] == before


@pytest.mark.parametrize(
    ("recipe", "error", "message"),
    [
        (
            {"operator": "svd", "inputs": ["t/a", "t/b"], "rank": 0},
            InvalidRecipe,
            "recipe: field 'rank': rank must be a positive integer or 'auto', got 0",
        ),
        (
            {"operator": "svd", "inputs": ["t/a", "t/b"], "rank": 65},
            InvalidRecipe,
            "rank 65 exceeds the full rank 32 of module 'model.layers.0.self_attn.k_proj' (32x64)",
        ),
        (
            {"operator": "svd", "inputs": ["t/a", "t/b"]},
            InvalidRecipe,
            "operator 'svd' needs 'rank'",
        ),
        (
            {"operator": "cat", "inputs": ["t/a"], "density": 0.5},
            InvalidRecipe,
            "operator 'cat' does not take 'density' (it takes: no parameters)",
        ),
        (
            {"operator": "cat", "inputs": ["t/a", "t/ia3"]},
            IncompatibleAdapters,
            "{ia3} is a ia3 adapter; `cat` takes lora adapters",
        ),
        (
            {"operator": "svd", "inputs": ["t/a", "t/dora"], "rank": 4},
            IncompatibleAdapters,
            "{dora} is a DoRA adapter: its weight is renormalised by the base weights' norms, so"
            " it is not a plain delta and `svd` would merge it wrongly; use `hub compose stack` or"
            " export it merged instead",
        ),
    ],
)
def test_bad_recipes_change_nothing(reg, recipe, error, message):
    before = [c["repo"] for c in reg.search_raw(all_versions=True)]
    with pytest.raises(error) as info:
        reg.compose({"name": "t/bad", **recipe})
    refs = {"ia3": reg.show("t/ia3").ref, "dora": reg.show("t/dora").ref}
    assert str(info.value) == message.format(**refs)
    _nothing_written(reg, before)
    assert not (reg.home / "tmp").exists() or not any((reg.home / "tmp").iterdir())


def test_different_base_and_shapes_are_refused(reg, base_dir, tmp_path):
    other_base = make_base(tmp_path / "other-base", hidden_size=32, intermediate_size=64)
    other = make_adapter("lora", tmp_path / "other", other_base)
    reg.push(other, name="t/other-base")
    with pytest.raises(IncompatibleAdapters) as info:
        reg.compose({"operator": "cat", "name": "t/x", "inputs": ["t/a", "t/other-base"]})
    assert str(info.value) == (
        f"{reg.show('t/other-base').ref} was trained on base {str(other_base)!r} but"
        f" {reg.show('t/a').ref} on {str(base_dir)!r}; only adapters of one base model compose"
    )
    # Same base name, different shapes: caught per module from the tensors.
    shutil.copytree(other, tmp_path / "liar")
    config = json.loads((tmp_path / "liar" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base_dir)
    (tmp_path / "liar" / "adapter_config.json").write_text(json.dumps(config))
    reg.push(tmp_path / "liar", name="t/liar")
    with pytest.raises(IncompatibleAdapters) as info:
        reg.compose({"operator": "cat", "name": "t/x", "inputs": ["t/a", "t/liar"]})
    assert str(info.value) == (
        f"module 'model.layers.0.self_attn.q_proj' is (64, 64) in {reg.show('t/a').ref} but"
        f" (32, 32) in {reg.show('t/liar').ref}: the adapters were trained on different base"
        " shapes"
    )


@pytest.mark.numerics
def test_cli_form_and_recipe_file_are_equivalent(reg, hub_home, tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["compose", "svd", "t/a", "t/b", "--name", "t/cli", "--rank", "6", "--weights", "0.6,0.4"],
    )
    assert result.exit_code == 0, result.output
    card = reg.show("t/cli")
    assert result.stdout.startswith(f"Composed t/cli@v1 ({card.commit[:10]}): lora, rank 6, ")
    recipe = tmp_path / "merge.yaml"
    recipe.write_text(
        "operator: svd\nname: t/file\ninputs: [t/a, t/b]\nweights: [0.6, 0.4]\nrank: 6\n"
    )
    result = runner.invoke(cli, ["compose", "run", str(recipe)])
    assert result.exit_code == 0, result.output
    assert _agree(reg, "t/file", "t/cli", tmp_path)
    rebuilt = runner.invoke(cli, ["verify", "--rebuild", "t/cli"])
    assert rebuilt.exit_code == 0, rebuilt.output
    # Usually the same bytes; a kernel that rounds differently gives the second form (its
    # exact text is checked in tests/hub/test_rebuild.py).
    summary = rebuilt.stdout.removeprefix(f"Rebuilt {card.ref}: ")
    assert summary == "matches, bit for bit (3 files identical).\n" or summary.startswith(
        "matches within the rounding bound (2 files identical; "
    )

    recipe.write_text("operator: svd\nname: t/file\ninputs: [t/a]\nrnk: 6\n")
    bad = runner.invoke(cli, ["compose", "run", str(recipe)])
    assert bad.exit_code == 1
    assert bad.stderr == (
        f"Error: {recipe}: field 'rnk': not a recipe field (fields: operator, name, inputs,"
        " weights, layer_groups, rank, energy, factor, density, seed, variant, majority_sign,"
        " average, tasks, description)\n"
    )
    unknown = runner.invoke(cli, ["compose", "mean", "t/a", "--name", "t/x"])
    assert unknown.stderr == (
        "Error: unknown operator 'mean' (choose one of cat, linear, svd, ties, dare,"
        " magnitude-prune, stack, average, ensemble, or `run RECIPE.yaml`)\n"
    )
    weights = runner.invoke(
        cli, ["compose", "cat", "t/a", "t/b", "--name", "t/x", "--weights", "1"]
    )
    assert weights.stderr == (
        "Error: command line: weights: 1 weights for 2 inputs (give one weight per input)\n"
    )
    density = runner.invoke(
        cli, ["compose", "ties", "t/a", "t/b", "--name", "t/x", "--density", "1.5"]
    )
    assert (
        density.stderr
        == "Error: command line: field 'density': Input should be less than or equal to 1\n"
    )
