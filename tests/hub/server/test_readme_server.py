"""The README's "Team server" commands, run as written against a real `hub serve`.

Two things differ from a person typing them: the port is a free one instead of 8000, and
``HUB_TOKEN`` gets the token ``hub token create`` printed instead of the example value.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.hub.server.live import free_port

ROOT = Path(__file__).resolve().parents[3]


def _block() -> list[str]:
    section = ROOT.joinpath("README.md").read_text().split("## Team server", 1)[1]
    own = re.split(r"\n##+ ", section, maxsplit=1)[0]  # up to the next (sub)section
    (block,) = re.findall(r"```bash\n(.*?)```", own, flags=re.S)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_team_server_commands_run_as_written(tmp_path, adapters, hub_home):
    for name, method in (("sql-lora", "lora"), ("chat-ia3", "ia3")):
        shutil.copytree(adapters(method), tmp_path / "adapters" / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, command in (
        ("hub", f'"{sys.executable}" -m cli.main'),
        ("python", f'"{sys.executable}"'),
    ):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        PYTHONPATH=str(ROOT),
        HF_HOME=str(tmp_path / "hf-home"),
    )
    port = str(free_port())
    lines = [re.sub(r"\b8000\b", port, line) for line in _block()]
    assert any(line.startswith("hub serve") for line in lines)
    exports: list[str] = []
    token = None
    server = None
    try:
        for line in lines:
            if token is not None:
                line = re.sub(r"HUB_TOKEN=hub_\S+", f"HUB_TOKEN={token}", line)
            if line.startswith("export "):
                exports.append(line)
                continue
            command = "; ".join([*exports, line])
            if line.startswith("hub serve"):
                server = subprocess.Popen(
                    ["bash", "-c", f"exec {line}"], cwd=tmp_path, env=env, start_new_session=True
                )
                _wait_for(f"http://127.0.0.1:{port}/openapi.json")
                continue
            result = subprocess.run(
                ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True
            )
            assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
            if line.startswith("hub token create"):
                token = result.stdout.strip()
                assert token.startswith("hub_")
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
    for folder in ("pulled/sql-lora", "from-hf/sql-lora"):
        for path in (tmp_path / "adapters" / "sql-lora").iterdir():
            assert (tmp_path / folder / path.name).read_bytes() == path.read_bytes()
    from hub import Registry

    with Registry(hub_home) as reg:
        assert reg.show("team/chat-ia3").method == "ia3"


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"{url} did not answer"
            time.sleep(0.1)
