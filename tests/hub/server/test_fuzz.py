"""Fuzz every route in the OpenAPI schema (schemathesis): never a 5xx, whatever the input."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub import Registry
from hub.server import create_app
from hub.tokens import create_token

schemathesis.serializer.alias("application/x-ndjson", "text/plain")  # the HF commit body


@pytest.mark.filterwarnings("ignore")
def test_api_never_answers_5xx(tmp_path, adapters):
    with Registry(tmp_path / "home") as reg:
        reg.push(adapters("lora"), name="team/sql")
        token = create_token(reg, "fuzz", read=["*"], write=["*"])
    app = create_app(tmp_path / "home")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: op.method.upper() == "DELETE")  # team/sql stays until last
    paths = {op.path for op in operations}
    assert {"/api/hub/v1/adapters", "/api/models/{namespace}/{name}/commit/{revision}"} <= paths
    assert len(operations) >= 20
    failures = []
    for operation in operations:

        @given(case=operation.as_strategy(), existing=st.booleans())
        @settings(
            max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case, existing):
            if existing and "namespace" in (case.path_parameters or {}):
                case.path_parameters.update(namespace="team", name="sql")  # a real adapter
            response = case.call(headers={"Authorization": f"Bearer {token}"})
            if response.status_code >= 500:
                failures.append((case.method, case.formatted_path, response.text[:200]))

        check()
    assert failures == []
