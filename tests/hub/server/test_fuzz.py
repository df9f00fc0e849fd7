"""Fuzz the native API against its own OpenAPI schema (schemathesis): never a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from hub import Registry
from hub.server import create_app
from hub.tokens import create_token


@pytest.mark.filterwarnings("ignore")
def test_native_api_never_answers_5xx(tmp_path, adapters):
    with Registry(tmp_path / "home") as reg:
        reg.push(adapters("lora"), name="team/sql")
        token = create_token(reg, "fuzz", read=["*"], write=["*"])
    app = create_app(tmp_path / "home")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [
        result.ok()
        for result in schema.get_all_operations()
        if result.ok().path.startswith("/api/hub/")
    ]
    assert len(operations) >= 8
    failures = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case):
            response = case.call(headers={"Authorization": f"Bearer {token}"})
            if response.status_code >= 500:
                failures.append((case.method, case.formatted_path, response.text[:200]))

        check()
    assert failures == []
