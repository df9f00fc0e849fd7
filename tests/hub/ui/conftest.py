"""One registry of real PEFT adapters served by a real `hub serve` on 127.0.0.1, shared by the
web page's tests (built once per session: pushing and composing takes a while).

Namespaces: ``team`` (LoRAs of two ranks, a DoRA, an IA3, a prompt-tuning adapter, an SVD
merge and a stack of them, a README with a ``<script>`` in it, eval records with intervals)
and ``private`` (one LoRA only the ``both`` token may read).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hub.server.live import LiveServer, start_server

HOSTILE_README = """---
license: mit
---
# SQL LoRA

Turns questions into SQL. <script>window.__pwned = 1</script>

<img src="x" onerror="window.__pwned = 2">

[click](javascript:window.__pwned=3)
"""


@dataclass
class UiHub:
    home: Path
    server: LiveServer
    tokens: dict[str, str]
    """``team``: reads team; ``both``: reads team and private."""
    base: str
    """The base model the adapters name (a local folder)."""

    @property
    def url(self) -> str:
        return self.server.url


def build_registry(home: Path, base: Path, work: Path) -> dict[str, str]:
    """Push and compose the adapters; returns the tokens."""
    from hub import Registry
    from hub.tokens import create_token
    from schemas.recipe import Recipe
    from tests.factories import make_adapter

    sql = make_adapter("lora", work / "sql", base, seed=1)
    (sql / "README.md").write_text(HOSTILE_README)
    sql_v2 = make_adapter("lora", work / "sql-v2", base, seed=3, r=4, lora_alpha=8)
    chat = make_adapter("lora", work / "chat", base, seed=2, r=16, lora_alpha=32)
    with Registry(home) as reg:
        reg.push(
            sql,
            name="team/sql-lora",
            tasks=["sql"],
            tags=["stage=prod"],
            metrics=["exact_match=0.71@spider"],
        )
        reg.tag("team/sql-lora", "prod")
        reg.push(chat, name="team/chat-lora", tasks=["chat"], metrics=["exact_match=0.55@spider"])
        reg.push(make_adapter("dora", work / "dora", base), name="team/sql-dora", tasks=["sql"])
        reg.push(make_adapter("ia3", work / "ia3", base), name="team/ia3", tasks=["sql"])
        reg.push(make_adapter("prompt_tuning", work / "prompt", base), name="team/prompt")
        reg.push(make_adapter("lora", work / "secret", base, seed=5), name="private/secret-lora")
        reg.add_metric("team/sql-lora", "accuracy=0.8@mmlu", ci=(0.75, 0.85), n=200)
        reg.add_metric("team/chat-lora", "accuracy=0.7@mmlu", ci=(0.64, 0.76), n=200)
        reg.compose(
            Recipe(
                operator="svd",
                name="team/merged",
                inputs=["team/sql-lora@v1", "team/chat-lora"],
                rank=4,
            )
        )
        reg.compose(
            Recipe(
                operator="stack", name="team/stacked", inputs=["team/sql-lora@v1", "team/prompt"]
            )
        )
        # v2 of sql-lora after the composites were built from v1: lineage names exact commits.
        reg.push(
            sql_v2,
            name="team/sql-lora",
            tasks=["sql"],
            tags=["stage=dev"],
            metrics=["exact_match=0.74@spider"],
        )
        return {
            "team": create_token(reg, "team-reader", read=["team"], write=[]),
            "both": create_token(reg, "both-reader", read=["team", "private"], write=[]),
        }


@pytest.fixture(scope="session")
def ui_hub(tmp_path_factory, base_dir) -> UiHub:
    root = tmp_path_factory.mktemp("ui-hub")
    home = root / "home"
    tokens = build_registry(home, base_dir, root / "adapters")
    with start_server(home) as server:
        yield UiHub(home, server, tokens, str(base_dir))
