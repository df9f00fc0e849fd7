"""AdapterHub adapters like any other: ``hub eval --cost`` measures them (a bottleneck
unmerged only, with the reason; a LoRA also merged by adapters' own ``merge_adapter``),
``hub ls --where`` filters by their architecture, reduction factor and placement, and
``hub compare`` (and its web page) shows them beside PEFT adapters."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.adapterhub.factories import make_adapter

TINY_COST = {"prompt_lengths": (4, 8), "batch_sizes": (1, 2), "new_tokens": 3, "warmup": 1,
             "runs": 10}  # fmt: skip


@pytest.fixture(scope="module")
def eval_base(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny Llama with a tokenizer, and held-out text rows for it."""
    from tests.compose.deploy.models import make_base
    from tests.hub.trained import HELD_OUT

    root = tmp_path_factory.mktemp("ah-eval")
    base = make_base(root / "base", tokenizer="bpe")
    data = root / "held-out.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in HELD_OUT))
    return base, data


def test_cost_of_a_bottleneck_is_measured_unmerged_only(registry, eval_base, tmp_path):
    base, data = eval_base
    saved = make_adapter("houlsby", base, tmp_path / "houlsby")
    card = registry.push(saved.folder, name="ah/cost").card
    [record] = registry.evaluate(
        card.ref, data, base=str(base), cost=True, cost_options=TINY_COST, with_base=False
    )
    cost = record["cost"]
    # Unmerged only: a merge is refused, with the reason, in the record.
    assert list(cost["modes"]) == ["base", "unmerged"]
    assert cost["merge"] is None
    assert cost["merge_note"] == (
        "AdapterHub adapter: its bottleneck applies a non-linearity (swish) between the down and"
        " up projections, so no weight of the base can absorb it; it runs unmerged"
    )
    assert card.inference_overhead.model_dump() == {
        "none_when_merged": False, "extra_tokens": 0, "extra_layers": 4
    }  # fmt: skip
    unmerged, plain = cost["modes"]["unmerged"], cost["modes"]["base"]
    # The extra bytes are the adapter's own values (fp32), as the ledger counts them.
    assert unmerged["model_bytes"] - plain["model_bytes"] == 4 * card.params_extra_at_inference
    assert unmerged["above_base_bytes"] == unmerged["peak_bytes"] - plain["peak_bytes"]
    assert set(unmerged["overhead"]) == {"prefill", "decode"}
    for c in unmerged["configs"]:
        assert c["prefill_ms"]["runs"] == 10 and c["decode_ms_per_step"]["median"] > 0
    assert cost["adapter_load_seconds"] > 0 and cost["prompt"] is None
    # The eval itself is recorded on the version, and the adapter changes the scores.
    assert record["commit"] == card.commit
    assert registry.evals(card.ref)[0]["cost"]["merge_note"] == cost["merge_note"]


def test_cost_of_an_adapterhub_lora_merges_through_adapters(registry, eval_base, tmp_path):
    base, data = eval_base
    card = registry.push(make_adapter("lora", base, tmp_path / "lora").folder, name="ah/lora").card
    [record] = registry.evaluate(
        card.ref, data, base=str(base), cost=True, cost_options=TINY_COST, with_base=False
    )
    cost = record["cost"]
    assert list(cost["modes"]) == ["base", "unmerged", "merged"] and cost["merge_note"] is None
    # adapters' merge_adapter folds the LoRA into the weights: the merged model's outputs are
    # the unmerged one's (probe prompts, fp32), and its greedy tokens agree.
    assert cost["merge"]["max_logit_diff"] < 1e-4
    assert cost["merge"]["greedy_token_agreement"] == 1.0
    assert cost["merge"]["seconds"] > 0


def test_where_by_architecture_reduction_factor_and_placement(registry, bases, tmp_path):
    from tests.factories import make_adapter as make_peft_adapter
    from tests.factories import make_base as make_peft_base

    base = bases["llama"]
    for kind in ("houlsby", "pfeiffer", "parallel", "lora"):
        registry.push(make_adapter(kind, base, tmp_path / kind).folder, name=f"ah/{kind}")
    peft_base = make_peft_base(tmp_path / "peft-base")
    registry.push(make_peft_adapter("lora", tmp_path / "peft", peft_base), name="ah/peft")

    def repos(*where: str) -> list[str]:
        return [c.repo for c in registry.search(where=list(where), sort="name")]

    # factories.configs(): Houlsby rf 16 (both places), Pfeiffer rf 8, parallel rf 4.
    assert repos("architecture=bottleneck") == ["ah/houlsby", "ah/parallel", "ah/pfeiffer"]
    assert repos("reduction_factor=8") == ["ah/pfeiffer"]
    assert repos("reduction_factor>=8") == ["ah/houlsby", "ah/pfeiffer"]
    assert repos("placement=after_ffn") == ["ah/houlsby", "ah/pfeiffer"]
    assert repos("placement=after_attention") == ["ah/houlsby"]
    assert repos("placement=parallel_ffn") == ["ah/parallel"]
    assert repos("non_linearity=swish") == ["ah/houlsby"]
    assert repos("variant=pfeiffer", "library=adapters") == ["ah/pfeiffer"]
    assert repos("architecture=lora") == ["ah/lora"]  # the PEFT LoRA has no such detail
    assert repos("inference_overhead.extra_layers>=4", "library=adapters") == [
        "ah/houlsby",
        "ah/lora",
    ]
    # The CLI, and the team server's search, take the same conditions.
    result = CliRunner().invoke(
        cli, ["ls", "--library", "adapters", "--where", "placement=after_ffn",
              "--where", "reduction_factor>=8", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [c["repo"] for c in json.loads(result.stdout)] == ["ah/houlsby", "ah/pfeiffer"]


def test_compare_and_its_page_show_adapterhub_adapters(bases, tmp_path, hub_home):
    from hub import Registry
    from tests.factories import make_adapter as make_peft_adapter
    from tests.hub.server.live import start_server

    base = bases["llama"]
    with Registry(hub_home) as registry:
        cards = [
            registry.push(make_adapter("houlsby", base, tmp_path / "h").folder, name="cmp/houlsby",
                          metrics=["accuracy=0.7@sst2"]).card,
            registry.push(make_adapter("lora", base, tmp_path / "l").folder, name="cmp/ah-lora",
                          metrics=["accuracy=0.6@sst2"]).card,
            registry.push(make_peft_adapter("lora", tmp_path / "p", base), name="cmp/peft",
                          metrics=["accuracy=0.65@sst2"]).card,
        ]  # fmt: skip
    refs = [c.ref for c in cards]
    result = CliRunner().invoke(cli, ["compare", *refs, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = {a["ref"]: a for a in report["adapters"]}
    houlsby, ah_lora, peft = (rows[r] for r in refs)
    assert (houlsby["library"], houlsby["method"], houlsby["variant"], houlsby["rank"]) == (
        "adapters", "bottleneck", "houlsby", 4
    )  # fmt: skip
    assert (peft["library"], peft["method"]) == ("peft", "lora")
    for row, card in zip((houlsby, ah_lora, peft), cards, strict=True):
        assert row["params_stored"] == card.params_stored
        assert row["params_changed_when_merged"] == card.params_changed_when_merged
        assert row["params_extra_at_inference"] == card.params_extra_at_inference
    assert houlsby["params_changed_when_merged"] is None and houlsby["overhead"] == "extra layers"
    assert ah_lora["overhead"] == "none when merged"
    sim = report["similarity"]
    assert sim["skipped"] == {
        refs[0]: "AdapterHub bottleneck: no weight delta to compare (a non-linearity sits"
        " between its projections)",
        refs[1]: "AdapterHub lora: weight-space similarity reads PEFT's tensors only (compared"
        " here by its card and metrics)",
    }
    assert sim["cosine"][2][2] == pytest.approx(1.0) and sim["cosine"][0][2] is None

    # The web page: the same rows, the method with its library, the reasons shown.
    with start_server(hub_home, anonymous_read=True) as server:
        query = "&".join(f"ref={r}" for r in refs)
        with urllib.request.urlopen(f"{server.url}/ui/compare?{query}") as response:
            html = response.read().decode()
    from html import escape

    for ref in refs:
        assert f'<tr data-ref="{ref}">' in html
    assert (
        '<td class="method">bottleneck (houlsby) <span class="muted library">adapters</span></td>'
        in html
    )
    assert '<td class="method">lora</td>' in html  # the PEFT one: no library shown
    assert f'<p class="muted">{refs[0]}: {escape(sim["skipped"][refs[0]])}</p>' in html


@pytest.mark.parametrize("kind", ["houlsby", "pfeiffer", "parallel", "compacter", "prefix", "lora",
                                  "ia3", "mam", "unipelt"])  # fmt: skip
def test_every_adapterhub_kind_gets_its_eval_and_cost_recorded(registry, eval_base, tmp_path, kind):
    """Issue 15's "eval and cost recorded", kind by kind: the quality against the base (paired
    delta) and the cost, merged where adapters can merge (an ungated LoRA or IA3), unmerged
    with the reason otherwise."""
    from hub.convert import convert_adapter
    from tests.adapterhub.factories import SAFETENSORS_REFUSED

    base, data = eval_base
    folder = make_adapter(kind, base, tmp_path / kind).folder
    if kind in SAFETENSORS_REFUSED:  # adapters 1.3.0 pickles these: hub convert first
        folder = convert_adapter(folder).path
    card = registry.push(folder, name=f"ah/{kind}").card
    [record] = registry.evaluate(card.ref, data, base=str(base), cost=True, cost_options=TINY_COST)
    assert record["commit"] == card.commit and record["dataset"]["rows"] > 0
    adapter, plain = record["metrics"]["cross_entropy"], record["base"]["metrics"]["cross_entropy"]
    assert record["delta"]["cross_entropy"]["value"] == pytest.approx(
        adapter["value"] - plain["value"], abs=1e-9
    )
    cost = record["cost"]
    mergeable = kind in ("lora", "ia3")
    assert list(cost["modes"]) == ["base", "unmerged", "merged"][: 3 if mergeable else 2]
    assert (cost["merge_note"] is None) == mergeable
    for c in cost["modes"]["unmerged"]["configs"]:
        assert c["prefill_ms"]["runs"] == 10 and c["decode_ms_per_step"]["median"] > 0
    assert registry.evals(card.ref)[0]["id"] == record["id"]
