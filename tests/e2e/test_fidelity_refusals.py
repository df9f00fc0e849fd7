"""The refusals of the fidelity table, as users meet them: the exact one-line ``Error:`` of
``hub export`` and of the compose operators, the push warning for unknown config keys, and
nothing written. Adapters are built like the table's (``tests/e2e/fidelity.py``)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.main import cli
from compose.peft_config import PEFT_VERSION
from schemas.errors import IncompatibleAdapters
from tests.e2e.fidelity import Bases, build_adapter
from tests.e2e.test_fidelity import CASES

BY_ID = {case.id: case for case in CASES}


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> Bases:
    return Bases(tmp_path_factory.mktemp("refusal-bases"))


def _folder(case_id, bases, tmp_path):
    case = BY_ID[case_id]
    folder, _ = build_adapter(case, bases(case.base), tmp_path / case_id)
    return folder


@pytest.mark.parametrize(
    ("case_id", "why"),
    [
        (
            "pissa-unconverted",
            "was saved with init_lora_weights='pissa' and not converted: PEFT loads it onto the"
            " base minus its top-r singular components, not onto the original base, so applying"
            " it to the original base (merged or as a LoRA file) would be wrong; save it with"
            " save_pretrained(..., path_initial_model_for_weight_conversion=INITIAL), INITIAL"
            " being the adapter saved before training, to get a plain LoRA of the original"
            " base, and push that",
        ),
        (
            "alora",
            "is an activated LoRA (aLoRA, alora_invocation_tokens=[5, 9]): it applies only from"
            " its invocation tokens on, which neither merged weights nor plain LoRA files for"
            " vLLM or llama.cpp express (PEFT: 'aLoRA does not support merging'); serve it"
            " unmerged with PEFT",
        ),
        (
            "unknown-key-on",
            f"sets adapter_config.json field(s) 'use_future_variant'=True, unknown to PEFT"
            f" {PEFT_VERSION} (the version hub reads configs as): they may change the forward"
            " pass, so it is not merged; use a hub release that knows them",
        ),
    ],
)
def test_export_refuses_with_one_line(case_id, why, hub_home, bases, tmp_path):
    folder = _folder(case_id, bases, tmp_path)
    runner = CliRunner()
    pushed = runner.invoke(cli, ["push", str(folder), "--name", f"t/{case_id}"])
    assert pushed.exit_code == 0, pushed.output
    out = tmp_path / "out"
    for fmt in ("safetensors", "vllm-bundle"):
        result = runner.invoke(
            cli,
            ["export", f"t/{case_id}", "--base", str(bases.folders[BY_ID[case_id].base]), "-o",
             str(out), "--format", fmt],
        )  # fmt: skip
        assert result.exit_code == 1
        ref = f"t/{case_id}@"
        assert result.stderr.startswith(f"Error: adapter {ref}")
        assert result.stderr.endswith(f" {why}\n")
        assert result.stderr.count("\n") == 1
        assert not out.exists()


def test_push_warns_once_about_unknown_keys(hub_home, bases, tmp_path):
    folder = _folder("unknown-key-off", bases, tmp_path)
    result = CliRunner().invoke(cli, ["push", str(folder), "--name", "t/future"])
    assert result.exit_code == 0, result.output
    assert result.stderr == (
        f"Warning: {folder / 'adapter_config.json'}: field(s) 'future_variant_config',"
        f" 'use_future_variant' unknown to PEFT {PEFT_VERSION}, kept on the card as"
        " unknown_config_keys; export and compose refuse to merge it while one of them is on\n"
    )
    assert result.stdout.startswith("Pushed t/future@v1 ")
    plain = CliRunner().invoke(cli, ["push", str(_folder("lora-llama", bases, tmp_path))])
    assert plain.exit_code == 0 and plain.stderr == ""


@pytest.mark.parametrize(
    ("case_id", "why"),
    [
        (
            "bias-all-qwen2",
            "trains the base model's biases (bias='all': model.layers.0.self_attn.k_proj);"
            " `linear` cannot merge it",
        ),
        ("alora", "is an activated LoRA (aLoRA, alora_invocation_tokens=[5, 9])"),
        ("pissa-unconverted", "was saved with init_lora_weights='pissa' and not converted"),
        ("adalora-pruned", None),
    ],
)
def test_compose_refuses_what_it_would_merge_wrongly(case_id, why, registry, bases, tmp_path):
    folder = _folder(case_id, bases, tmp_path)
    ref = registry.push(folder, name="t/input").card.ref
    before = [c["repo"] for c in registry.search_raw(all_versions=True)]
    with pytest.raises(IncompatibleAdapters) as info:
        registry.compose({"operator": "linear", "name": "t/out", "inputs": [ref, ref]})
    if why is None:  # not a linear-mergeable method at all
        assert "adalora" in str(info.value)
    else:
        assert str(info.value).startswith(f"{ref} {why}")
    assert [c["repo"] for c in registry.search_raw(all_versions=True)] == before
