"""hub eval's refusals: an eval of several adapters that fails part-way records nothing (no
record, no base score, no blob), a base that does not fit is named with its module and both
shapes, rows that cannot be scored once tokenized name their line, and the base folder is
recorded resolved so `--rerun` finds it from anywhere."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from peft import LoraConfig, OFTConfig, PromptTuningConfig

from cli.main import cli
from schemas.errors import IncompatibleAdapters
from tests.compose.deploy.models import make_adapter, make_base
from tests.hub.server.live import count_rows

pytestmark = pytest.mark.usefixtures("deployment")


@pytest.fixture(scope="module")
def wide(trained, tmp_path_factory):
    """Adapters made for a wider base than ``trained``'s: ``{method: folder}``."""
    root = tmp_path_factory.mktemp("wide")
    base = make_base(root / "base", hidden=96, heads=4, kv_heads=2, tokenizer="bpe")
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"])
    oft = OFTConfig(task_type="CAUSAL_LM", r=0, oft_block_size=4, target_modules=["q_proj"])
    prompt = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    return {
        "lora": make_adapter(root / "lora", base, lora),
        "oft": make_adapter(root / "oft", base, oft),
        "prompt_tuning": make_adapter(root / "prompt", base, prompt),
    }


def _stored(registry):
    return (
        count_rows(registry, "evals"),
        count_rows(registry, "base_scores"),
        sorted(registry.store.iter_digests()),
    )


def test_a_multi_ref_eval_that_fails_part_way_records_nothing(registry, trained, wide):
    base, lora, _, data = trained
    registry.push(lora, name="team/good")
    oft = registry.push(wide["oft"], name="team/wide-oft").card
    before = _stored(registry)
    # OFT is loaded by PEFT (no header check): team/good and the base are scored first, then
    # the load fails. Nothing of team/good's run is kept: no record, no cached base score.
    with pytest.raises(IncompatibleAdapters) as err:
        registry.evaluate(["team/good", "team/wide-oft"], data, base=str(base))
    assert str(err.value) == (
        f"team/wide-oft@{oft.commit} does not fit the base {base.resolve()}: tensor"
        " model.layers.0.self_attn.q_proj.oft_R.weight is [24, 6] in the adapter, but the base"
        " needs [16, 6]"
    )
    assert registry.evals("team/good") == []
    assert _stored(registry) == before
    assert [m for m in registry.show("team/good").metrics if m.source == "hub-eval"] == []

    # The same eval without the misfit records it, and caches the base's scores once.
    [record] = registry.evaluate(["team/good"], data, base=str(base))
    assert registry.evals("team/good") == [record]
    assert count_rows(registry, "base_scores") == 1


def test_cli_multi_ref_failure_prints_one_error_and_no_recorded_line(hub_home, trained, wide):
    base, _, lora2, data = trained
    runner = CliRunner()
    assert runner.invoke(cli, ["push", str(lora2), "--name", "t/lora2"]).exit_code == 0
    assert runner.invoke(cli, ["push", str(wide["lora"]), "--name", "t/wide"]).exit_code == 0
    commit = json.loads(runner.invoke(cli, ["show", "t/wide", "--json"]).stdout)["commit"]
    result = runner.invoke(cli, ["eval", "t/lora2", "t/wide", "--data", str(data), "--base",
                                 str(base)])  # fmt: skip
    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: t/wide@{commit} does not fit the base {base.resolve()}: module"
        " model.layers.0.self_attn.q_proj changes a [96, 96] weight, but the base's is"
        " [64, 64]\n",
    )
    assert result.stdout == ""
    shown = json.loads(runner.invoke(cli, ["show", "t/lora2", "--json"]).stdout)
    assert shown["evals"] == []


def test_a_base_that_does_not_fit_is_named_before_anything_is_scored(registry, trained, wide):
    base, _, _, data = trained
    for method, message in [
        ("lora", "module model.layers.0.self_attn.q_proj changes a [96, 96] weight, but the"
                 " base's is [64, 64]"),
        ("prompt_tuning", "it has virtual tokens of 96 dimensions, but the base's hidden size"
                          " is 64"),
    ]:  # fmt: skip
        card = registry.push(wide[method], name=f"team/wide-{method}").card
        before = _stored(registry)
        with pytest.raises(IncompatibleAdapters) as err:
            registry.evaluate(card.repo, data, base=str(base))
        assert str(err.value) == (
            f"{card.ref} does not fit the base {base.resolve()}: {message}"
        ), method
        assert _stored(registry) == before  # not even the base was scored and cached


def test_rows_that_cannot_be_scored_name_their_line_and_record_nothing(hub_home, trained, tmp_path):
    base, lora, _, _ = trained
    runner = CliRunner()
    runner.invoke(cli, ["push", str(lora), "--name", "team/rows"])
    one_token = tmp_path / "x.jsonl"
    one_token.write_text('{"text": "the quick brown fox"}\n{"text": "a"}\n')
    empty_prompt = tmp_path / "p.jsonl"
    empty_prompt.write_text('{"prompt": "the quick", "target": " brown"}\n'
                            '{"prompt": "", "target": " fox"}\n')  # fmt: skip
    for data, extra, message in [
        (one_token, ["--no-base"], 'Error: x.jsonl line 2: "text" has 1 token, and a text'
         " row's first token is only context: nothing is left to score (a text row needs at"
         " least 2 tokens)\n"),
        (empty_prompt, [], 'Error: p.jsonl line 2: "prompt" has no tokens (the tokenizer adds'
         " no BOS), so exact_match has nothing to generate from; give a prompt, or score only"
         " --metric target_logprob\n"),
        (empty_prompt, ["--metric", "exact_match"], 'Error: p.jsonl line 2: "prompt" has no'
         " tokens (the tokenizer adds no BOS), so exact_match has nothing to generate from;"
         " give a prompt, or score only --metric target_logprob\n"),
    ]:  # fmt: skip
        args = ["eval", "team/rows", "--data", str(data), "--base", str(base), *extra]
        result = runner.invoke(cli, args)
        assert (result.exit_code, result.stderr) == (1, message)
    shown = json.loads(runner.invoke(cli, ["show", "team/rows", "--json"]).stdout)
    assert shown["evals"] == []
    # target_logprob alone is defined on an empty prompt (lm-eval's rule: after the BOS).
    args = ["eval", "team/rows", "--data", str(empty_prompt), "--base", str(base), "--metric",
            "target_logprob", "--json"]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    [record] = json.loads(result.stdout)
    assert record["metrics"]["target_logprob"]["n"] == 2


def test_a_relative_base_is_recorded_resolved_for_rerun(hub_home, trained, tmp_path, monkeypatch):
    base, lora, _, data = trained
    runner = CliRunner()
    runner.invoke(cli, ["push", str(lora), "--name", "team/rel"])
    monkeypatch.chdir(base.parent)
    args = ["eval", "team/rel", "--data", str(data), "--base", base.name, "--no-base", "--json"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    [record] = json.loads(result.stdout)
    assert record["config"]["base"] == str(base.resolve())

    monkeypatch.chdir(tmp_path)  # elsewhere: the recorded path still leads to the base
    result = runner.invoke(cli, ["eval", "--rerun", record["id"]])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"Reproduced {record['id']} as ev-")


def test_a_recorded_base_that_is_not_here_is_named(registry, trained, tmp_path, monkeypatch):
    from hub.eval_store import store_record

    base, lora, _, data = trained
    card = registry.push(lora, name="team/gone").card
    [record] = registry.evaluate("team/gone", data, base=str(base), with_base=False)
    # A record made before bases were recorded resolved: the path as it was given.
    old = {**record, "id": "ev-0123456789ab", "config": {**record["config"], "base": "w/base"}}
    store_record(registry, card, old)
    moved = {**record, "id": "ev-ba9876543210",
             "config": {**record["config"], "base": str(tmp_path / "moved")}}  # fmt: skip
    store_record(registry, card, moved)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for eval_id, message in [
        ("ev-0123456789ab", "Error: ev-0123456789ab was scored against the base 'w/base', which"
         " is neither a folder here nor an adapter in the registry (a relative path is read from"
         " the current directory): give --base DIR (the same base model)\n"),
        ("ev-ba9876543210", f"Error: ev-ba9876543210 was scored against the base"
         f" {tmp_path / 'moved'}, which is not a folder here: give --base DIR (the same base"
         " model)\n"),
    ]:  # fmt: skip
        result = runner.invoke(cli, ["eval", "--rerun", eval_id])
        assert (result.exit_code, result.stderr) == (1, message)
    # --base names it, and the rerun reproduces the record.
    result = runner.invoke(cli, ["eval", "--rerun", "ev-0123456789ab", "--base", str(base)])
    assert result.exit_code == 0, result.output
