"""``hub ls --where FIELD OP VALUE``: any card field (top level or a ``details`` key) filters
like a metric, in SQL; lists match on any element; bad specs get one error line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli.main import cli
from schemas.search import FieldCondition


@pytest.fixture
def pushed(registry, adapters):
    registry.push(adapters("lora"), name="team/lora")
    registry.push(adapters("dora"), name="team/dora")
    registry.push(adapters("ia3"), name="team/ia3")
    registry.push(adapters("prompt_tuning"), name="team/prompt")
    return {c.repo: c for c in registry.search()}


def _repos(registry, *where):
    return [c.repo for c in registry.search(where=list(where), sort="name")]


@pytest.mark.usefixtures("deployment")  # embedded, then team (PostgreSQL + S3)
def test_top_level_fields(registry, pushed):
    lora, dora = pushed["team/lora"], pushed["team/dora"]
    assert dora.variant == "dora" and lora.rank is not None

    def having(test):
        return sorted(repo for repo, card in pushed.items() if test(card))

    assert _repos(registry, "variant=dora") == ["team/dora"]
    assert "team/lora" in _repos(registry, f"rank={lora.rank}")
    assert _repos(registry, f"rank={lora.rank}") == having(lambda c: c.rank == lora.rank)
    assert _repos(registry, f"rank>={lora.rank}", "method=lora") == having(
        lambda c: c.method == "lora" and (c.rank or 0) >= lora.rank
    )
    assert _repos(registry, "rank<0") == []
    # != needs the field: every card has a variant (null for most), so all but DoRA match.
    assert _repos(registry, "variant!=dora") == ["team/ia3", "team/lora", "team/prompt"]
    # A list field: = is "contains".
    assert "q_proj" in lora.target_modules
    with_q = having(lambda c: "q_proj" in c.target_modules)
    assert _repos(registry, "target_modules=q_proj") == with_q != sorted(pushed)
    assert "team/lora" not in _repos(registry, "target_modules!=q_proj")
    # Nested fields by their path.
    tokens = pushed["team/prompt"].inference_overhead.extra_tokens
    assert tokens > 0
    assert _repos(registry, f"inference_overhead.extra_tokens={tokens}") == ["team/prompt"]
    smaller = having(lambda c: c.params_stored < lora.params_stored)
    assert _repos(registry, f"params_stored<{lora.params_stored}") == smaller


@pytest.mark.usefixtures("deployment")  # embedded, then team (PostgreSQL + S3)
def test_details_keys_by_their_name(registry, pushed):
    ia3 = pushed["team/ia3"]
    key, value = next((k, v) for k, v in ia3.details.items() if isinstance(v, list) and v)
    assert _repos(registry, f"{key}={value[0]}") == _repos(registry, f"details.{key}={value[0]}")
    assert "team/ia3" in _repos(registry, f"{key}={value[0]}")
    # A number never equals text, and an unknown field matches nothing.
    assert _repos(registry, "variant=8") == []
    assert _repos(registry, "no_such_field=1") == []


@pytest.mark.usefixtures("deployment")  # embedded, then team (PostgreSQL + S3)
def test_cli_and_errors(hub_home, pushed):
    runner = CliRunner()
    result = runner.invoke(cli, ["ls", "--where", "variant=dora", "--json"])
    assert result.exit_code == 0, result.output
    assert [c["repo"] for c in json.loads(result.stdout)] == ["team/dora"]
    for spec in ("rank", "=4", "rank=", "1x>2"):
        result = runner.invoke(cli, ["ls", "--where", spec])
        assert (result.exit_code, result.stderr) == (
            1,
            f"Error: invalid --where {spec!r}: expected FIELD OP VALUE (a card field such as"
            " variant or rank, or a details key such as reduction_factor or placement) or"
            " metric:NAME[@DATASET]OP VALUE, with OP one of !=, >=, <=, >, <, =, e.g."
            " 'reduction_factor>=8'\n",
        )
    result = runner.invoke(cli, ["ls", "--where", "variant>dora"])
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: invalid --where 'variant>dora': > compares numbers, and 'dora' is not one"
        " (text compares with = or !=)\n",
    )


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("rank>=8", ("$.rank", ">=", 8.0)),
        ("reduction_factor = 16", ("$.details.reduction_factor", "=", 16.0)),
        ("details.placement=after_ffn", ("$.details.placement", "=", "after_ffn")),
        ("inference_overhead.extra_layers!=0", ("$.inference_overhead.extra_layers", "!=", 0.0)),
        ("non_linearity=nan", ("$.details.non_linearity", "=", "nan")),
    ],
)
def test_syntax(spec, parsed):
    c = FieldCondition.parse(spec)
    assert (c.path, c.op, c.value) == parsed
