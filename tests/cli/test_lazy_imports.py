"""Read commands never import torch, transformers or peft (start-up stays fast)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from cli.main import cli
for argv in (["ls", "--json"], ["show", "team/sql", "--json"], ["verify"], ["push", "--help"]):
    try:
        cli(argv, standalone_mode=False)
    except SystemExit:
        pass
print(sorted(m for m in ("torch", "transformers", "peft", "numpy") if m in sys.modules))
"""


def test_read_commands_do_not_import_heavy_libraries(registry, adapters, hub_home):
    registry.push(adapters("lora"), name="team/sql")
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"
