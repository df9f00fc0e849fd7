"""The catalog seam: how a registry's catalog is chosen, and the commit transaction's
check of the head a commit was built on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hub import Registry
from hub.catalog import Catalog, open_catalog
from hub.catalog.sqlite import SqliteCatalog
from hub.registry import commit_id
from schemas.errors import InvalidArgument


def test_no_url_is_the_embedded_index_in_home(hub_home):
    catalog = open_catalog(None, hub_home)
    try:
        assert isinstance(catalog, SqliteCatalog)
        assert catalog.location == str(hub_home / "index.db")
        assert catalog.schema_version() == catalog.latest_schema() > 0
        assert catalog.upgrade() == 0  # opening upgraded it; nothing is left to apply
    finally:
        catalog.close()
    with Registry(hub_home) as reg:
        assert isinstance(reg.catalog, Catalog)
        assert reg.catalog.location == str(hub_home / "index.db")


@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite:///tmp/x.db", "hub.db"])
def test_an_unknown_scheme_names_the_option_and_writes_nothing(hub_home, url):
    scheme = url.partition("://")[0] if "://" in url else ""
    with pytest.raises(InvalidArgument) as caught:
        open_catalog(url, hub_home)
    assert str(caught.value) == (
        f"invalid --db {url!r} (HUB_DATABASE_URL): unknown scheme {scheme + '://'!r};"
        " give postgresql://USER@HOST/DB, or leave it unset for the embedded index in --home"
    )
    assert not (hub_home / "index.db").exists()


def test_a_password_never_reaches_the_message(hub_home):
    with pytest.raises(InvalidArgument) as caught:
        open_catalog("mysql://user:s3cret@host/db", hub_home)
    assert "s3cret" not in str(caught.value)
    assert "'mysql://user:***@host/db'" in str(caught.value)


def test_a_commit_built_on_a_stale_head_is_refused_in_its_transaction(hub_home, adapters):
    with Registry(hub_home) as reg:
        v1 = reg.push(adapters("lora"), name="team/sql").card
        stale = commit_id(None, [])  # what a client saw before v1
        with pytest.raises(InvalidArgument) as caught:
            reg.push(adapters("ia3"), name="team/sql", expected_head=stale)
        assert caught.value.status == 412
        assert str(caught.value) == (
            f"team/sql moved on: parent commit {stale[:12]} is not the head {v1.commit[:12]}"
            " (fetch the latest revision and commit again)"
        )
        assert [c.version for c in reg.versions("team/sql")] == [1]
        v2 = reg.push(adapters("ia3"), name="team/sql", expected_head=v1.commit).card
        assert v2.version == 2
        assert reg.show("team/sql").commit == v2.commit


def test_a_new_repository_expects_the_empty_head(hub_home, adapters):
    with Registry(hub_home) as reg:
        card = reg.push(adapters("lora"), name="team/new", expected_head=commit_id(None, []))
        assert card.card.version == 1
        assert reg.catalog.repo("team/new").last_version == 1


def test_no_sql_outside_the_catalog():
    # The seam holds only while every statement lives behind it (a second backend is then
    # one new module): no sqlite3 and no statement text anywhere else in hub/.
    root = Path(__file__).resolve().parents[2] / "hub"
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.parent.name == "catalog":
            continue
        text = path.read_text()
        for pattern in (r"\bimport sqlite3\b", r"\.execute(many)?\(", r"\bSELECT\b.+\bFROM\b"):
            if re.search(pattern, text):
                found.append(f"{path.relative_to(root.parent)}: {pattern}")
    assert found == []
