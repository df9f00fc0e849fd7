"""Fuzz the server (short runs; benchmarks/fuzz_server.py runs them long): never a 5xx.

schemathesis covers every route of the OpenAPI schema, with a valid token and with none; our
mutation fuzzer covers the bodies that reach the deepest code (push bodies, NDJSON commits).
"""

from __future__ import annotations

import pytest

from hub import Registry
from hub.server import create_app
from hub.tokens import create_token
from tests.hub.server.fuzzing import Target, fuzz_bodies, fuzz_routes
from tests.hub.server.live import start_server


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("auth", ["token", "none"])
def test_every_route_never_answers_5xx(tmp_path, adapters, auth):
    with Registry(tmp_path / "home") as reg:
        reg.push(adapters("lora"), name="team/sql")
        token = create_token(reg, "fuzz", read=["*"], write=["*"])
    headers = {"Authorization": f"Bearer {token}"} if auth == "token" else {}
    result = fuzz_routes(
        create_app(tmp_path / "home"), headers, max_examples=8, seed=0, existing="team/sql"
    )
    assert result.operations >= 20
    assert result.failures == []
    if auth == "none":  # most cases are refused for want of a token
        assert result.statuses[401] > result.cases // 2, result.statuses


def test_mutated_pushes_commits_and_recipes_never_answer_5xx(tmp_path, adapters):
    with start_server(tmp_path / "home") as server:
        with Registry(server.home) as reg:
            token = create_token(reg, "fuzz", read=["team"], write=["team"])
        results = fuzz_bodies(
            Target(server.url, token), adapters("lora"), cases=100, seconds=25, seed=0
        )
    for kind, result in results.items():
        assert result.failures == [], kind
        assert result.cases >= 30, (kind, result.cases)
        # The mutations reach past parsing: some are stored, most are refused with a 4xx.
        assert (
            result.statuses[200] > 0
            and sum(n for status, n in result.statuses.items() if 400 <= status < 500)
            > result.cases // 3
        ), (kind, result.statuses)
