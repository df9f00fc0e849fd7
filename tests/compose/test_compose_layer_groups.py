"""Per-layer-group weights in a recipe (``layer_groups``): each module is merged with the weights
of its layer's group, exactly as the same operator merges it with plain weights; modules outside
the layers take the last group's; the result rebuilds; bad groups are refused naming the field."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from cli.main import cli
from compose.layer_groups import ModuleWeights, describe_layers, split_layers, touched_layers
from compose.peft_patterns import layer_index
from schemas import InvalidRecipe
from tests.factories import make_adapter

G0, G1 = [0.7, -0.4], [0.2, 1.1]
GROUPS = [{"layers": [0], "weights": G0}, {"layers": [1], "weights": G1}]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, base_dir):
    root = tmp_path_factory.mktemp("layer-groups")
    return {
        # lm_head has no layer index: it takes the last group's weights.
        "a": make_adapter(
            "lora", root / "a", base_dir, seed=21, target_modules=["q_proj", "v_proj", "lm_head"]
        ),
        "b": make_adapter(
            "lora",
            root / "b",
            base_dir,
            seed=22,
            r=4,
            lora_alpha=4,
            target_modules=["q_proj", "k_proj"],
        ),
        "ia3": make_adapter("ia3", root / "ia3", base_dir, seed=23),
        "ia3b": make_adapter("ia3", root / "ia3b", base_dir, seed=24),
    }


@pytest.fixture
def reg(registry, inputs):
    for name in inputs:
        registry.push(inputs[name], name=f"t/{name}")
    return registry


def _tensors(reg, ref, tmp_path):
    return load_file(reg.pull(ref, tmp_path / ref.replace("/", "-")) / "adapter_model.safetensors")


def test_layer_names_and_even_contiguous_splits():
    assert layer_index("model.layers.3.self_attn.q_proj") == 3
    assert layer_index("transformer.h.0.attn.c_attn") == 0
    assert layer_index("model.layers.1.mlp.experts.5.w1") == 1  # the layer, not the expert
    assert layer_index("lm_head") is None and layer_index("model.embed_tokens") is None
    assert touched_layers(["lm_head", "model.layers.2.q", "model.layers.0.q"]) == [0, 2]
    assert split_layers(list(range(8)), 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert split_layers([0, 1, 2, 3], 2) == [[0, 1], [2, 3]]
    assert split_layers([0, 1, 2, 3], 1) == [[0, 1, 2, 3]]
    assert split_layers([0, 1, 2, 3], 4) == [[0], [1], [2], [3]]
    assert describe_layers([0, 1, 2, 5]) == "layers 0-2, 5"
    assert describe_layers([7]) == "layer 7"
    weights = ModuleWeights({"layer_groups": GROUPS})
    assert weights("model.layers.0.self_attn.q_proj") == G0
    assert weights("model.layers.1.self_attn.q_proj") == G1
    assert weights("lm_head") == G1  # outside the layers: the last group
    assert ModuleWeights({"weights": [0.5, 0.5]})("lm_head") == [0.5, 0.5]


@pytest.mark.parametrize(
    ("operator", "extra"),
    [
        ("cat", {}),
        ("linear", {}),
        ("svd", {"rank": 4}),
        ("ties", {"density": 0.5, "rank": 6}),
        ("dare", {"density": 0.5, "seed": 3}),
        ("magnitude-prune", {"density": 0.5}),
    ],
)
def test_each_module_is_the_operators_merge_with_its_groups_weights(reg, tmp_path, operator, extra):
    recipe = {"operator": operator, "inputs": ["t/a", "t/b"], **extra}
    card = reg.compose({**recipe, "name": "t/grouped", "layer_groups": GROUPS}).card
    # The same operator with plain weights, once per group's weights: every module of the
    # grouped result is that merge's module for its group (the same steps, so within fp32
    # rounding: a BLAS may round a repeated product differently by memory alignment).
    flat = [
        reg.compose({**recipe, "name": f"t/flat{g}", "weights": w}).card
        for g, w in enumerate((G0, G1))
    ]
    grouped = _tensors(reg, card.ref, tmp_path)
    per_group = [_tensors(reg, c.ref, tmp_path) for c in flat]
    assert set(grouped) == set(per_group[0])
    groups_seen = set()
    for key, tensor in grouped.items():
        layer = layer_index(key.removeprefix("base_model.model."))
        group = 1 if layer is None else layer
        groups_seen.add((layer, group))
        assert _close(tensor, per_group[group][key]), key
    assert groups_seen == {(0, 0), (1, 1), (None, 1)}  # lm_head took the last group's
    assert any(not _close(grouped[k], per_group[0][k]) for k in grouped if ".layers.1." in k)
    recipe_record = card.lineage.recipe
    assert recipe_record["layer_groups"] == GROUPS
    assert "weights" not in recipe_record
    readme = reg.read_file(card, "README.md").decode()
    assert "- `" + reg.show("t/a").ref + "` (weights: 0.7 in layer 0, 0.2 in layer 1)" in readme
    assert "Modules outside the decoder layers take the last group's weights." in readme
    assert reg.rebuild(card.ref).matches


def test_linear_groups_match_the_dense_reference(reg, inputs, tmp_path):
    """The grouped linear merge against the deltas computed from the input files (fp64)."""
    card = reg.compose(
        {"operator": "linear", "name": "t/ref", "inputs": ["t/a", "t/b"], "layer_groups": GROUPS}
    ).card
    merged = _tensors(reg, card.ref, tmp_path)
    files = [load_file(inputs[k] / "adapter_model.safetensors") for k in ("a", "b")]
    scales = [16 / 8, 4 / 4]  # lora_alpha / r of each input
    checked = 0
    for key in merged:
        if ".lora_A." not in key:
            continue
        b_key = key.replace(".lora_A.", ".lora_B.")
        module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
        weights = ModuleWeights({"layer_groups": GROUPS})(module)
        expected = sum(
            w * s * (f[b_key].double() @ f[key].double())
            for f, w, s in zip(files, weights, scales, strict=True)
            if key in f
        )
        got = merged[b_key].double() @ merged[key].double()
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), module
        checked += 1
    assert checked == 7  # 2 layers x (q, v, k) + lm_head


def test_ia3_groups_weight_each_modules_offset(reg, inputs, tmp_path):
    card = reg.compose(
        {"operator": "linear", "name": "t/ia3g", "inputs": ["t/ia3", "t/ia3b"],
         "layer_groups": GROUPS}
    ).card  # fmt: skip
    merged = _tensors(reg, card.ref, tmp_path)
    one = load_file(inputs["ia3"] / "adapter_model.safetensors")
    two = load_file(inputs["ia3b"] / "adapter_model.safetensors")
    for key, vector in merged.items():
        w = G0 if ".layers.0." in key else G1
        expected = 1 + w[0] * (one[key].double() - 1) + w[1] * (two[key].double() - 1)
        assert torch.allclose(vector.double(), expected, atol=1e-6), key
    assert reg.rebuild(card.ref).matches


def test_a_recipe_file_with_layer_groups_composes_and_verifies(reg, hub_home, tmp_path):
    recipe = tmp_path / "groups.yaml"
    recipe.write_text(
        "operator: svd\nname: t/file\ninputs: [t/a, t/b]\nrank: 4\nlayer_groups:\n"
        "  - {layers: [0], weights: [0.7, -0.4]}\n  - {layers: [1], weights: [0.2, 1.1]}\n"
    )
    runner = CliRunner()
    result = runner.invoke(cli, ["compose", "run", str(recipe)])
    assert result.exit_code == 0, result.output
    card = reg.show("t/file")
    assert card.lineage.recipe["layer_groups"] == GROUPS and card.rank == 4
    rebuilt = runner.invoke(cli, ["verify", "--rebuild", "t/file"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert rebuilt.stdout.startswith(f"Rebuilt {card.ref}: matches")


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        (
            {"operator": "linear", "layer_groups": [{"layers": [0], "weights": [1.0, 1.0]}]},
            # Layer 1 in no group: its first module (sorted) is named, with the groups given.
            "layer_groups: module 'model.layers.1.self_attn.k_proj' is in layer 1, which no"
            " group lists (the groups: layer 0); add layer 1 to one group",
        ),
        (
            {"operator": "stack", "layer_groups": GROUPS},
            "operator 'stack' does not take 'layer_groups' (per-layer-group weights merge with:"
            " cat, linear, svd, ties, dare, magnitude-prune)",
        ),
        (
            {"operator": "linear", "layer_groups": GROUPS, "weights": [1.0, 1.0]},
            "recipe: weights: give the weights once, for all layers (weights) or per layer group"
            " (layer_groups[].weights), not both",
        ),
        (
            {"operator": "linear", "layer_groups": [{"layers": [0, 1], "weights": [1.0]}]},
            "recipe: layer_groups.0.weights: 1 weights for 2 inputs (give one weight per input)",
        ),
        (
            {"operator": "linear", "layer_groups": [GROUPS[0], {**GROUPS[1], "layers": [1, 0]}]},
            "recipe: layer_groups.1.layers: layer 0 is also in group 0 (each layer belongs to one"
            " group)",
        ),
        (
            {"operator": "linear", "layer_groups": [{"layers": [], "weights": G0}]},
            "recipe: field 'layer_groups.0.layers': List should have at least 1 item after"
            " validation, not 0",
        ),
        (
            {"operator": "linear", "layer_groups": [{**GROUPS[0], "layer": [0]}]},
            "recipe: field 'layer_groups.0.layer': not a layer group field (fields: layers,"
            " weights)",
        ),
    ],
)
def test_bad_layer_groups_are_refused_naming_the_field(reg, recipe, message):
    before = [c["repo"] for c in reg.search_raw(all_versions=True)]
    with pytest.raises(InvalidRecipe) as info:
        reg.compose({"name": "t/bad", "inputs": ["t/a", "t/b"], **recipe})
    assert str(info.value) == message
    assert [c["repo"] for c in reg.search_raw(all_versions=True)] == before


def _close(a, b) -> bool:
    """Equal within fp32 rounding of the larger value."""
    return float((a.double() - b.double()).abs().max()) <= 1e-6 * float(b.abs().max())
