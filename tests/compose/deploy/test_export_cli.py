"""``hub export`` and ``Registry.export``: one call of the API, one-line errors."""

from __future__ import annotations

import json

import peft
import pytest
from click.testing import CliRunner

from cli.main import cli


@pytest.fixture(scope="session")
def v_lora(llama_base, adapter):
    return adapter("cli-lora", llama_base, peft.LoraConfig(r=4, target_modules=["v_proj"]))


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_export_folder_prints_one_line(v_lora, llama_base, tmp_path, hub_home):
    result = invoke(
        "export", v_lora, "--base", llama_base, "-o", tmp_path / "out", "--dtype", "bf16"
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        f"Exported {tmp_path / 'out'} (safetensors, 1 adapter(s) on {llama_base},"
    )


def test_export_json_and_gguf(v_lora, llama_base, tmp_path, hub_home):
    pytest.importorskip("gguf")
    result = invoke(
        "export", v_lora, "--base", llama_base, "-o", tmp_path / "g", "--format", "gguf",
        "--quant", "Q8_0", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["files"] == ["Modelfile", "README.md", "model-q8_0.gguf"]
    assert data["details"]["quant"] == "q8_0"


def test_existing_output_is_one_error_line(v_lora, llama_base, tmp_path, hub_home):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    result = invoke("export", v_lora, "--base", llama_base, "-o", tmp_path / "out")
    assert result.exit_code == 1
    out = tmp_path / "out"
    assert result.output == (
        f"Error: {out} already exists (choose another -o or pass --force to replace it)\n"
    )


@pytest.mark.usefixtures("deployment")  # embedded, then team (PostgreSQL + S3)
def test_registry_references_record_commits(v_lora, llama_base, tmp_path, registry):
    pytest.importorskip("hub.inspect")
    card = registry.push(v_lora, name="team/v-lora").card
    result = registry.export(
        "team/v-lora", base=llama_base, output=tmp_path / "out", format="gguf-lora", progress=False
    )
    assert result.adapters == [card.ref]
    assert result.files == ["README.md", "v-lora.gguf"]
    assert f"1. `{card.ref}`" in (result.path / "README.md").read_text()
