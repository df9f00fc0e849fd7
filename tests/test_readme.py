"""The README's usage examples are run as written, so the docs cannot drift from the code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _blocks(language: str, section: str = "## Usage") -> list[str]:
    text = ROOT.joinpath("README.md").read_text().split(section, 1)[1]
    return re.findall(rf"```{language}\n(.*?)```", text.split("\n## ", 1)[0], flags=re.S)


def _run_block(block: str, cwd, env) -> None:
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    for command in lines:
        result = subprocess.run(
            ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"


def _workspace(tmp_path, adapters):
    (tmp_path / "adapters").mkdir()
    shutil.copytree(adapters("lora"), tmp_path / "adapters" / "sql-lora")
    shutil.copytree(adapters("ia3"), tmp_path / "adapters" / "chat-ia3")
    return _workspace_bin(tmp_path)


def _workspace_bin(tmp_path):
    """A `hub` on PATH that runs this checkout's CLI with the test's interpreter."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "hub").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cli.main "$@"\n')
    (bin_dir / "hub").chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
    }


def test_usage_commands_run_as_written(tmp_path, adapters, hub_home):
    env = _workspace(tmp_path, adapters)
    (block,) = _blocks("bash")
    assert len(block.splitlines()) >= 10
    _run_block(block, tmp_path, env)
    assert (tmp_path / "pulled" / "sql-lora" / "adapter_model.safetensors").is_file()


def test_compose_commands_run_as_written(tmp_path, adapters, base_dir, hub_home):
    from hub import Registry
    from tests.factories import make_adapter

    env = _workspace(tmp_path, adapters)
    with Registry(hub_home) as registry:
        # What the recipe names: team/sql-lora@v2 and team/code-lora@prod.
        registry.push(adapters("lora"), name="team/sql-lora")
        second = tmp_path / "sql-v2"
        shutil.copytree(adapters("lora"), second)
        (second / "README.md").write_text("SQL adapter, second version.")
        registry.push(second, name="team/sql-lora")
        code = make_adapter(
            "lora", tmp_path / "code", base_dir, seed=5, r=4, target_modules=["q_proj", "k_proj"]
        )
        registry.push(code, name="team/code-lora")
        registry.tag("team/code-lora", "prod")
    recipe, groups = _blocks("yaml", "## Compose")
    (tmp_path / "merge.yaml").write_text(recipe)
    (tmp_path / "groups.yaml").write_text(groups)
    (block,) = _blocks("bash", "## Compose")
    _run_block(block, tmp_path, env)
    with Registry(hub_home) as registry:
        assert registry.show("team/sql-code").details["retained_energy"] > 0.5
        grouped = registry.show("team/sql-code-groups").lineage.recipe["layer_groups"]
        assert grouped == [
            {"layers": [0], "weights": [0.9, 0.1]},
            {"layers": [1], "weights": [0.2, 0.8]},
        ]


def test_python_api_example_runs(tmp_path, adapters, hub_home):
    env = _workspace(tmp_path, adapters)
    (code,) = _blocks("python")  # the Python API example
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("lora 8 ['q_proj', 'v_proj']")


def test_evaluate_commands_run_as_written(tmp_path, trained, hub_home):
    """The Evaluate and compare section, on adapters trained for seconds on a synthetic task."""
    import json

    from hub import Registry

    base, lora, lora2, data = trained
    env = _workspace_bin(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "llama").symlink_to(base)
    shutil.copy(data, tmp_path / "dev.jsonl")
    shutil.copy(data, tmp_path / "wiki.jsonl")  # the --forgetting text
    with Registry(hub_home) as registry:
        registry.push(lora, name="team/sql-lora")
        registry.push(lora2, name="team/code-lora")
    (block,) = _blocks("bash", "## Evaluate and compare")
    _run_block(block, tmp_path, env)
    with Registry(hub_home) as registry:
        sources = [r["source"] for r in registry.evals("team/sql-lora")]
        assert sources == ["hub-eval", "hub-eval", "manual", "hub-eval", "hub-eval"]
        costed = registry.evals("team/sql-lora")[3]
        assert costed["forgetting"]["tokens"] > 0
        assert sorted(costed["cost"]["modes"]) == ["base", "merged", "unmerged"]
        assert json.loads(json.dumps(registry.evals("team/code-lora")))[0]["delta"]
    assert (tmp_path / "plots" / "output-kl.png").is_file()
