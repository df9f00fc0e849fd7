"""What the pages' data leaves out for a viewer (hub/ui/pages.py), through the Python API."""

from __future__ import annotations

import shutil

import pytest

from hub import Registry
from hub.tokens import authenticate
from hub.ui.access import Viewer
from hub.ui.pages import adapter_page
from schemas.errors import AdapterNotFound
from schemas.recipe import Recipe


def test_references_into_unreadable_namespaces_are_not_links(ui_hub, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(ui_hub.home, home)
    with Registry(home) as reg:
        reg.compose(
            Recipe(
                operator="stack", name="team/mixed", inputs=["team/sql-dora", "private/secret-lora"]
            )
        )
        team = Viewer(authenticate(reg, ui_hub.tokens["team"]), everything=False)
        both = Viewer(authenticate(reg, ui_hub.tokens["both"]), everything=False)
        secret = reg.show("private/secret-lora")
        page = adapter_page(reg, team, "team/mixed", None)
        assert [(i["ref"].split("@")[0], i["readable"]) for i in page["lineage"]["inputs"]] == [
            ("team/sql-dora", True),
            ("private/secret-lora", False),
        ]
        assert [m["readable"] for m in page["composite"]["members"]] == [True, False]
        # What was built from the private adapter is listed to whoever may read that...
        built = adapter_page(reg, both, "private/secret-lora", None)["built_from"]
        assert [b["ref"].split("@")[0] for b in built] == ["team/mixed"]
        # ...and the private adapter itself stays hidden from the team reader.
        with pytest.raises(AdapterNotFound):
            adapter_page(reg, team, secret.repo, None)
        everything = Viewer(None, everything=True, local=True)
        assert all(
            i["readable"]
            for i in adapter_page(reg, everything, "team/mixed", None)["lineage"]["inputs"]
        )
