"""Hostile input on the command line: one `Error:` line, nothing written, readers unharmed."""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3

import pytest
from click.testing import CliRunner

from cli.main import cli
from hub import Registry
from tests.hub.server.live import store_leftovers

# Every test on both deployments; the one that edits the SQLite file itself is embedded_only.
pytestmark = pytest.mark.usefixtures("deployment")


def _nothing_stored(hub_home, deployment):
    """No blob, and no write begun, in the deployment's store."""
    with Registry(hub_home, **deployment) as reg:
        return list(reg.store.iter_digests()) == [] and store_leftovers(reg.store) == []


@pytest.fixture
def run(hub_home):
    def invoke(*args, ok=True):
        result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke


def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("value", ["inf", "-inf", "1e400", "Infinity"])
def test_non_finite_metrics_are_refused(run, adapters, hub_home, deployment, value):
    result = run(
        "push", adapters("lora"), "--name", "team/sql", "--metric", f"acc={value}", ok=False
    )
    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: invalid --metric 'acc={value}': the value must be a finite number"
        " (inf and values beyond 1.8e308 are not)\n",
    )
    assert not (hub_home / "store").exists()
    assert _nothing_stored(hub_home, deployment)


@pytest.mark.embedded_only("writes what an older version left in the SQLite index's rows")
def test_a_non_finite_metric_already_stored_does_not_break_readers(run, adapters, hub_home):
    run("push", adapters("lora"), "--name", "team/sql", "--metric", "acc=0.5", "--metric", "f1=0.7")
    # What an older version wrote for `--metric acc=inf`: the card's JSON holds `Infinity`.
    with sqlite3.connect(hub_home / "index.db") as db:
        (card_text,) = db.execute("SELECT card FROM versions").fetchone()
        card = json.loads(card_text)
        card["metrics"][0]["value"] = math.inf
        db.execute("UPDATE versions SET card = ?", (json.dumps(card),))
        db.execute("UPDATE metrics SET value = ? WHERE name = 'acc'", (math.inf,))
    assert "Infinity" in json.dumps(card)
    shown = _strict_json(run("show", "team/sql", "--json").stdout)
    assert [(m["name"], m["value"]) for m in shown["metrics"]] == [("f1", 0.7)]
    listed = _strict_json(run("ls", "--json", "--sort", "metric:acc").stdout)
    assert [[(m["name"], m["value"]) for m in c["metrics"]] for c in listed] == [[("f1", 0.7)]]
    assert "metrics           f1=0.7" in run("show", "team/sql").stdout
    assert Registry(hub_home).search()[0].metric("f1") == 0.7


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--rank", "99999999999999999999999"],
            "invalid --rank '99999999999999999999999': 99999999999999999999999 is over 1000000,"
            " more than any adapter's rank",
        ),
        (
            ["--rank", "4..99999999999999999999999"],
            "invalid --rank '4..99999999999999999999999': 99999999999999999999999 is over"
            " 1000000, more than any adapter's rank",
        ),
        (
            ["--limit", "99999999999999999999999"],
            "invalid --limit 99999999999999999999999: must be between 0 and 100000"
            " (leave it out for every result)",
        ),
        (
            ["--limit", "-1"],
            "invalid --limit -1: must be between 0 and 100000 (leave it out for every result)",
        ),
    ],
)
def test_out_of_range_search_bounds_are_one_line(run, registry, adapters, args, message):
    registry.push(adapters("lora"), name="team/sql")
    result = run("ls", *args, ok=False)
    assert (result.exit_code, result.stderr) == (1, f"Error: {message}\n")
    assert (
        run("ls", "--rank", "<=1000000", "--limit", "100000", "--json").stdout.count('"repo"') == 1
    )


def test_non_utf8_file_name_is_refused_before_anything_is_stored(
    run, adapters, hub_home, deployment, tmp_path
):
    folder = tmp_path / "odd"
    shutil.copytree(adapters("lora"), folder)
    with open(os.path.join(os.fsencode(folder), b"notes-\xff.txt"), "wb") as fh:
        fh.write(b"latin-1 name")
    result = run("push", folder, "--name", "team/odd", ok=False)
    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: {folder}: the file name b'notes-\\xff.txt' is not valid UTF-8; rename it\n",
    )
    assert not (hub_home / "store" / "blobs").exists()  # no orphan blobs
    assert _nothing_stored(hub_home, deployment)


@pytest.mark.parametrize("where", ["registry", "parent", "inside"])
def test_pull_and_export_never_write_over_the_registry(run, adapters, hub_home, base_dir, where):
    run("push", adapters("lora"), "--name", "team/sql")
    out = {"registry": hub_home, "parent": hub_home.parent, "inside": hub_home / "store" / "x"}[
        where
    ]
    message = (
        f"Error: -o {out}: the output folder would overlap the registry folder {hub_home}"
        " (it is, contains or is inside it); choose a folder outside the registry\n"
    )
    pulled = run("pull", "team/sql", "-o", out, "--force", ok=False)
    assert (pulled.exit_code, pulled.stderr) == (1, message)
    exported = run("export", "team/sql", "--base", base_dir, "-o", out, "--force", ok=False)
    assert (exported.exit_code, exported.stderr) == (1, message)
    assert run("verify").stdout.endswith("Registry is healthy.\n")
    assert [c["repo"] for c in json.loads(run("ls", "--json").stdout)] == ["team/sql"]


def test_control_characters_in_tables_are_escaped(run, adapters):
    run(
        "push",
        adapters("lora"),
        "--name",
        "team/sql",
        "--task",
        "sql\x1b[2J",
        "--tag",
        "owner=\x1b]0;pwned\x07eve\u202e",
    )
    table = run("ls").stdout
    assert "\x1b" not in table and "sql\\x1b[2J" in table
    card = run("show", "team/sql").stdout
    assert "\x1b" not in card and "\x07" not in card and "\u202e" not in card
    assert "tags              owner=\\x1b]0;pwned\\x07eve\\u202e\n" in card
    # --json keeps the exact values: escaping is for terminals only.
    assert json.loads(run("show", "team/sql", "--json").stdout)["tasks"] == ["sql\x1b[2J"]
