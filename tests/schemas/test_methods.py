"""The method fact table agrees with the installed PEFT and with the README's table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from compose.support import support_table
from schemas.methods import METHODS, PROMPT_METHODS, ROWS, method_row

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_peft_type_has_exactly_one_row():
    from peft import PeftType

    assert sorted(METHODS) == sorted(t.value.lower() for t in PeftType)
    labels = [row.label for row in ROWS]
    assert len(labels) == len(set(labels))
    assert all(row.method in METHODS for row in ROWS)  # variants name a known method


@pytest.mark.parametrize("method", sorted(METHODS))
def test_family_and_prefix_agree_with_peft(method):
    from peft.config import PromptLearningConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    row = METHODS[method]
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING[method.upper()]
    assert (row.family == "prompt") == issubclass(config_class, PromptLearningConfig)
    peft_prefix = getattr(PEFT_TYPE_TO_TUNER_MAPPING[method.upper()], "prefix", None)
    if peft_prefix is not None and row.family != "prompt":
        assert row.prefix == peft_prefix
    if row.family == "prompt":
        assert row.merge == "none"
    # A merge path exists exactly for the methods PEFT's family says fold into the weights.
    assert (row.merge != "none") == (row.family == "mergeable")


def test_prompt_methods_and_variant_lookup():
    assert {"prompt_tuning", "prefix_tuning", "p_tuning", "cpt", "cartridge"} <= PROMPT_METHODS
    assert "lora" not in PROMPT_METHODS
    assert method_row("lora", "dora").compose == ("stack",)
    assert method_row("lora", "not-a-variant") is METHODS["lora"]
    assert method_row("fourierft").merge == "peft"


def test_readme_method_table_is_the_rendered_one():
    text = README.read_text()
    match = re.search(r"<!-- methods-table[^>]*-->\n(.*?)<!-- /methods-table -->", text, re.S)
    assert match is not None, "README.md lost its methods-table markers"
    assert match.group(1) == support_table(), (
        "README.md's method table is stale; replace it with compose.support.support_table():\n"
        + support_table()
    )
