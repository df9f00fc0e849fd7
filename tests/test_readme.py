"""The README's usage examples are run as written, so the docs cannot drift from the code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _blocks(language: str) -> list[str]:
    usage = ROOT.joinpath("README.md").read_text().split("## Usage", 1)[1]
    return re.findall(rf"```{language}\n(.*?)```", usage, flags=re.S)


def _workspace(tmp_path, adapters):
    (tmp_path / "adapters").mkdir()
    shutil.copytree(adapters("lora"), tmp_path / "adapters" / "sql-lora")
    shutil.copytree(adapters("ia3"), tmp_path / "adapters" / "chat-ia3")
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
    lines = _blocks("bash")[0].splitlines()
    commands = [line for line in lines if line.strip() and not line.startswith("#")]
    assert len(commands) >= 10
    for command in commands:
        result = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "pulled" / "sql-lora" / "adapter_model.safetensors").is_file()


def test_python_api_example_runs(tmp_path, adapters, hub_home):
    env = _workspace(tmp_path, adapters)
    (code,) = _blocks("python")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("lora 8 ['q_proj', 'v_proj']")
