"""The card's ``library`` (``peft`` or ``adapters``) and ``hub ls --library``, for PEFT cards,
including cards indexed before the field existed (AdapterHub's own: tests/adapterhub)."""

from __future__ import annotations

import json


def test_peft_cards_say_peft_and_filter_by_library(registry, adapters):
    card = registry.push(adapters("lora"), name="a/lora").card
    assert card.library == "peft"
    assert [c.repo for c in registry.search(library="peft")] == ["a/lora"]
    assert registry.search(library="adapters") == []


def test_cards_indexed_before_the_field_count_as_peft(registry, adapters):
    registry.push(adapters("lora"), name="a/old")
    with registry.catalog.write() as conn:
        (text,) = conn.execute("SELECT card FROM versions").fetchone()
        old = {k: v for k, v in json.loads(text).items() if k != "library"}
        conn.execute("UPDATE versions SET card = ?", (json.dumps(old),))
    assert [c.repo for c in registry.search(library="peft")] == ["a/old"]
    assert registry.search(library="adapters") == []
    assert registry.show("a/old").library == "peft"
