"""Shared fixtures: every test gets its own HUB_HOME; tiny models are built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The catalog backends (SQLite, a real PostgreSQL server): pg_url, db_url, postgres_server;
# the blob stores (a folder, a real S3 server): s3_store_url, store_url, s3_server.
pytest_plugins = ["tests.backends", "tests.s3"]

# The two deployments (embedded, team): a module runs on both by opting in with
# ``pytestmark = pytest.mark.usefixtures("deployment")`` (tests/hub/server/live.py).
from tests.hub.server.live import deployment  # noqa: E402

__all__ = ["deployment"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HUB_DISABLE_PROGRESS", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.embedded_only(reason)``: a test about the local folder or the SQLite
    file itself runs on the embedded deployment only; on the team one it is skipped, saying
    why (before its PostgreSQL database and S3 bucket are made)."""
    for item in items:
        marker = item.get_closest_marker("embedded_only")
        callspec = getattr(item, "callspec", None)
        if marker and callspec and callspec.params.get("deployment") == "team":
            item.add_marker(pytest.mark.skip(reason=f"embedded only: {marker.args[0]}"))


def deployment_of(request) -> dict[str, str]:
    """The test's ``deployment`` (``{}`` or ``{"db": ..., "store": ...}``); ``{}`` for a test
    that does not take it."""
    if "deployment" not in request.fixturenames:
        return {}
    return dict(request.getfixturevalue("deployment"))


_SERVER_TESTS = (Path(__file__).parent / "hub" / "server", Path(__file__).parent / "e2e")
"""Where a test's team deployment is a server's (tests/hub/server/live.py), not the env's."""


@pytest.fixture
def hub_home(request, tmp_path, monkeypatch) -> Path:
    """The test's own HUB_HOME. On the team deployment, HUB_DATABASE_URL and HUB_STORE_URL
    too: every `hub` the test runs (CliRunner or a process) then uses PostgreSQL and S3."""
    home = tmp_path / "hub-home"
    monkeypatch.setenv("HUB_HOME", str(home))
    if any(folder in Path(request.node.path).parents for folder in _SERVER_TESTS):
        # There the server is the deployment (live_server, LiveServer.hub_args), and a `hub`
        # client a test runs keeps a local registry of its own: nothing in the environment.
        return home
    team = deployment_of(request)
    for name, key in (("HUB_DATABASE_URL", "db"), ("HUB_STORE_URL", "store")):
        if key in team:
            monkeypatch.setenv(name, team[key])
    return home


@pytest.fixture
def registry(request, hub_home):
    """The registry over ``hub_home``, on the test's deployment."""
    from hub import Registry

    with Registry(hub_home, **deployment_of(request)) as reg:
        yield reg


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    from tests.factories import make_base

    return make_base(tmp_path_factory.mktemp("base") / "tiny-llama")


class AdapterFactory:
    """Builds each PEFT method's adapter once per session, on the shared tiny base."""

    def __init__(self, root: Path, base: Path) -> None:
        self.root, self.base, self.cache = root, base, {}

    def __call__(self, method: str) -> Path:
        if method not in self.cache:
            from tests.factories import make_adapter

            self.cache[method] = make_adapter(method, self.root / method, self.base)
        return self.cache[method]


@pytest.fixture(scope="session")
def adapters(tmp_path_factory, base_dir) -> AdapterFactory:
    return AdapterFactory(tmp_path_factory.mktemp("adapters"), base_dir)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny base with a tokenizer, two LoRAs trained for seconds on a synthetic task (40 and
    10 steps) and a held-out JSONL of that task: ``(base, lora, lora2, data)``."""
    import json

    from tests.compose.deploy.models import make_base
    from tests.hub.trained import HELD_OUT, train_lora

    root = tmp_path_factory.mktemp("trained")
    base = make_base(root / "base", tokenizer="bpe")
    data = root / "held-out.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in HELD_OUT))
    return base, train_lora(base, root / "lora"), train_lora(base, root / "lora2", 10, 1), data
