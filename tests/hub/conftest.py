"""Registry-test fixtures: adapters trained on a synthetic task (built once per session)."""

from __future__ import annotations

import json

import pytest

from tests.compose.deploy.models import make_base
from tests.hub.trained import HELD_OUT, train_lora


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evals")
    base = make_base(root / "base", tokenizer="bpe")
    data = root / "held-out.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in HELD_OUT))
    return base, train_lora(base, root / "lora"), train_lora(base, root / "lora2", 10, 1), data
