"""hub compose search --layer-groups: one weight per input for each group of decoder layers.

One LoRA T is trained on a walk task over a 4-layer base (attention, MLP and the LM head);
input A is T with its layers 2-3 negated, input B is T with its layers 0-1 negated (the LM
head kept in both). No single weight per input restores T (the two halves want opposite
mixtures), per layer group (A in layers 0-1, B in layers 2-3 and the LM head) it is exactly T.
The per-group search must find a much lower held-out loss than the single-weight search,
store a composite that records its groups and rebuilds; G=1 is the search as it was."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from cli.main import cli
from schemas.errors import AdapterNotFound, SearchRejected
from tests.hub.test_compose_search import LETTERS, walk


def _negated(folder, out, layers):
    """A copy of the adapter ``folder`` whose LoRA deltas in ``layers`` change sign."""
    shutil.copytree(folder, out)
    path = out / "adapter_model.safetensors"
    tensors = load_file(path)
    for key in tensors:
        if ".lora_B." in key and any(f".layers.{i}." in key for i in layers):
            tensors[key] = -tensors[key]
    save_file(tensors, path, metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    from tests.compose.deploy.models import make_base
    from tests.hub.trained import train_lora

    root = tmp_path_factory.mktemp("search-groups")
    # initializer_range 0.1: a base whose LM head and layers can move the logits by a few
    # nats (at 0.02 only the LM head can, and the layers would not matter).
    base = make_base(root / "base", tokenizer="bpe", layers=4, initializer_range=0.1)
    targets = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"]
    t = train_lora(
        base, root / "t", seed=0, texts=walk(LETTERS, 24, 0), steps=20, lr=3e-2,
        targets=targets, rank=4,
    )  # fmt: skip
    a = _negated(t, root / "a", [2, 3])
    b = _negated(t, root / "b", [0, 1])
    data = root / "few.jsonl"
    data.write_text("".join(json.dumps({"text": x}) + "\n" for x in walk(LETTERS, 20, 7)))
    return base, t, a, b, data


@pytest.fixture
def reg(registry, halves):
    _, _, a, b, _ = halves
    registry.push(a, name="t/a")
    registry.push(b, name="t/b")
    return registry


def _held_out_loss(base, folder, data):
    """Mean held-out loss of an adapter folder loaded by PEFT itself (not our hooks)."""
    from peft import PeftModel

    from compose.eval_data import read_eval_data
    from compose.search import SearchSettings, per_example_loss, split
    from hub.evals import _tokenizer, load_base_model

    _, held_out = split(read_eval_data(data), SearchSettings(seed=0))
    model = PeftModel.from_pretrained(load_base_model(base, "fp32", "cpu"), str(folder)).eval()
    losses = per_example_loss(model, _tokenizer(base), held_out, "cpu")
    return sum(losses) / len(losses)


def test_per_group_weights_beat_one_weight_per_input_and_rebuild(reg, halves, tmp_path):
    base, t, _, _, data = halves
    one = reg.compose_search(
        ["t/a", "t/b"], data, name="t/one", budget=40, device="cpu", keep_anyway=True
    ).outcome
    result = reg.compose_search(["t/a", "t/b"], data, name="t/two", budget=40, device="cpu",
                                layer_groups=2)  # fmt: skip
    two, card = result.outcome, result.push.card
    found_one, found_two = one.holdout["found"], two.holdout["found"]
    best_possible = _held_out_loss(base, t, data)  # T itself: the per-group optimum
    # Measured (seeded, CPU), cross-entropy in nats per token on the 4 held-out rows: one
    # weight per input 3.250 (it cannot restore both halves at once), per group 0.913, T
    # itself 0.914; uniform weights 4.735 (the halves cancel), the best single input 6.667.
    assert found_two < 0.5 * found_one
    assert found_two < 1.1 * best_possible
    assert found_one > 2 * best_possible
    assert two.beats_baselines  # stored without --keep-anyway
    assert two.holdout["uniform"] == one.holdout["uniform"]  # the baselines do not change
    assert two.holdout["best_single"] == one.holdout["best_single"]
    # Recorded: the groups' layers and weights in the recipe, the full vector in the search.
    stored = reg.show("t/two")
    recipe = stored.lineage.recipe
    assert len(two.weights) == 4 and two.layout == [[0, 1], [2, 3]]
    assert recipe["layer_groups"] == [
        {"layers": [0, 1], "weights": two.weights[:2]},
        {"layers": [2, 3], "weights": two.weights[2:]},
    ]
    assert "weights" not in recipe
    search = recipe["search"]
    assert search["layer_groups"] == [[0, 1], [2, 3]]
    assert search["weights"] == two.weights
    assert [len(s["weights"]) for s in search["trace"]] == [4] * 40
    assert search["trace"][0]["weights"] == [0.5] * 4  # the uniform start
    step = search["trace"][0]  # L1: the mean over the 2 groups of the sum of |w|
    assert step["objective"] == pytest.approx(step["loss"] + 0.05 * 2.0 / 2, rel=1e-12)
    # The candidate scored through hooks is the stored adapter, loaded by PEFT.
    pulled = reg.pull(card.ref, tmp_path / "two")
    assert _held_out_loss(base, pulled, data) == pytest.approx(found_two, rel=1e-5)
    rebuilt = CliRunner().invoke(cli, ["verify", "--rebuild", "t/two"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert rebuilt.stdout.startswith(f"Rebuilt {card.ref}: matches")
    _page_shows_the_groups(reg, card, two)


def _page_shows_the_groups(reg, card, outcome):
    import re

    from fastapi.testclient import TestClient

    from hub.ui.access import Viewer
    from hub.ui.pages import adapter_page
    from hub.ui.routes import create_ui_app

    page = adapter_page(reg, Viewer(None, everything=True, local=True), card.repo, None)
    view = page["composite"]["search"]
    assert view["groups"] == ["layers 0-1", "layers 2-3"]
    w = outcome.weights
    assert view["weights"] == [(card.lineage.inputs[0], [w[0], w[2]]),
                               (card.lineage.inputs[1], [w[1], w[3]])]  # fmt: skip
    assert view["trace"][0]["weights"] == [[0.5, 0.5], [0.5, 0.5]]
    with TestClient(create_ui_app(reg.home)) as client:
        html = client.get(f"/ui/adapters/{card.repo}").text
    table = re.findall(r'<table id="search-weights">(.*?)</table>', html, re.S)[0]
    assert "<th>input</th><th>layers 0-1</th><th>layers 2-3</th>" in table
    assert table.count('<td class="num">') == 4
    steps = re.findall(r'<table class="energy" id="search-steps">(.*?)</table>', html, re.S)[0]
    assert steps.count(" | ") == len(outcome.trace)  # each step's vector cut into its 2 groups


def test_one_layer_group_is_the_search_without_groups(reg, halves):
    _, _, _, _, data = halves
    options = {"budget": 8, "device": "cpu", "keep_anyway": True}
    plain = reg.compose_search(["t/a", "t/b"], data, name="t/plain", **options)
    one = reg.compose_search(["t/a", "t/b"], data, name="t/g1", layer_groups=1, **options)
    assert one.outcome.weights == plain.outcome.weights and len(one.outcome.weights) == 2
    assert [s.weights for s in one.outcome.trace] == [s.weights for s in plain.outcome.trace]
    assert one.outcome.holdout == plain.outcome.holdout
    assert one.outcome.layout is None
    recipes = [r.push.card.lineage.recipe for r in (plain, one)]
    for recipe in recipes:  # exactly the keys a search recorded before layer groups
        assert set(recipe) == {"operator", "rank", "energy", "factor", "weights", "description",
                               "search"}  # fmt: skip
        assert "layer_groups" not in recipe["search"]
    for recipe in recipes:
        recipe["search"].pop("seconds_per_candidate")
    assert recipes[0] == recipes[1]
    files = [{f.path: f.sha256 for f in r.push.card.files} for r in (plain, one)]
    assert files[0]["adapter_model.safetensors"] == files[1]["adapter_model.safetensors"]


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ("0", "Error: --layer-groups must be a positive number of groups, got 0\n"),
        ("-2", "Error: --layer-groups must be a positive number of groups, got -2\n"),
        (
            "5",
            "Error: --layer-groups 5: the adapters touch 4 decoder layers (layers 0-3); give at"
            " most 4\n",
        ),
    ],
)
def test_bad_layer_groups_are_one_error_line_and_store_nothing(reg, halves, groups, message):
    _, _, _, _, data = halves
    result = CliRunner().invoke(
        cli, ["compose", "search", "t/a", "t/b", "--data", str(data), "--name", "t/mix",
              "--layer-groups", groups],
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr == message
    assert [c.repo for c in reg.search()] == ["t/a", "t/b"]


def test_a_losing_grouped_result_is_refused_with_its_weights_per_group(reg, halves):
    _, _, _, _, data = halves
    with pytest.raises(SearchRejected) as info:  # one candidate: the uniform start
        reg.compose_search(["t/a", "t/b"], data, name="t/mix", budget=1, device="cpu",
                           layer_groups=2)  # fmt: skip
    assert str(info.value).startswith(
        "the weights found (layers 0-1: 0.5, 0.5; layers 2-3: 0.5, 0.5) do not beat the"
        " baselines on the 4 held-out rows (cross_entropy loss, lower is better): found "
    )
    with pytest.raises(AdapterNotFound):
        reg.show("t/mix")


def test_the_cli_prints_the_weights_per_group(reg, halves):
    _, _, _, _, data = halves
    result = CliRunner().invoke(
        cli, ["compose", "search", "t/a", "t/b", "--data", str(data), "--name", "t/mix",
              "--layer-groups", "4", "--budget", "4", "--keep-anyway", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    card = reg.show("t/mix")
    groups = card.lineage.recipe["layer_groups"]
    assert [g["layers"] for g in groups] == [[0], [1], [2], [3]]
    printed = "; ".join(
        f"layer {g['layers'][0]}: " + ",".join(f"{w:.4g}" for w in g["weights"]) for g in groups
    )
    assert result.stdout.startswith(
        f"Composed t/mix@v1 ({card.commit[:10]}) with weights {printed}: held-out cross_entropy"
    )
