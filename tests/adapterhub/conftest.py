"""AdapterHub tests run only where the ``adapters`` library is installed: ``make test`` runs
them in ``.venv-adapterhub`` (transformers 4.57 + adapters 1.3.0); the main environment
(transformers 5) skips them, naming why."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.hub.server.live import live_server, tokens

__all__ = ["live_server", "tokens"]

HAS_ADAPTERS = importlib.util.find_spec("adapters") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    skip = pytest.mark.skip(
        reason="needs the adapters library (make test runs these in .venv-adapterhub)"
    )
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.adapterhub)
            if not HAS_ADAPTERS:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def bases(tmp_path_factory) -> dict[str, Path]:
    from tests.adapterhub.factories import make_base

    root = tmp_path_factory.mktemp("adapterhub-bases")
    return {kind: make_base(kind, root / kind) for kind in ("bert", "llama")}
