"""Tiny bases and PEFT adapters shared by the deploy tests (built once per session)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.compose.deploy.models import make_adapter, make_base


class Builder:
    """Caches folders by key so each base / adapter is built once per session."""

    def __init__(self, root: Path) -> None:
        self.root, self.cache = root, {}

    def __call__(self, key: str, build: Callable[[Path], Any]) -> Path:
        if key not in self.cache:
            self.cache[key] = build(self.root / key)
        return self.cache[key]


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Builder:
    return Builder(tmp_path_factory.mktemp("deploy"))


@pytest.fixture(scope="session")
def llama_base(built) -> Path:
    """Sharded (several files + index), untied, byte-level BPE tokenizer."""
    return built("llama", lambda p: make_base(p, tokenizer="bpe", shard="40KB"))


@pytest.fixture(scope="session")
def tied_base(built) -> Path:
    return built("llama-tied", lambda p: make_base(p, tied=True, tokenizer="bpe"))


@pytest.fixture(scope="session")
def spm_base(built) -> Path:
    return built("llama-spm", lambda p: make_base(p, tokenizer="spm", seed=3))


@pytest.fixture(scope="session")
def qwen2_base(built) -> Path:
    return built("qwen2", lambda p: make_base(p, "qwen2", tokenizer="bpe", seed=4))


@pytest.fixture(scope="session")
def gpt2_base(built) -> Path:
    return built("gpt2", lambda p: make_base(p, "gpt2", tied=True, seed=5))


@pytest.fixture(scope="session")
def adapter(built) -> Callable[..., Path]:
    """``adapter(key, base, peft_config)``: a saved PEFT adapter, built once per key."""

    def build(key: str, base: Path, config: Any, seed: int = 1) -> Path:
        return built(f"adapter-{key}", lambda p: make_adapter(p, base, config, seed=seed))

    return build
