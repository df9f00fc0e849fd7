"""The CLI contract: exact output shapes and one-line errors (click's CliRunner)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.hub.server.live import overwrite_blob


@pytest.fixture
def run(hub_home):
    runner = CliRunner()

    def invoke(*args, ok=True):
        result = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke


@pytest.mark.usefixtures("deployment")  # embedded, then team (PostgreSQL + S3)
def test_push_ls_show_pull_round_trip(run, adapters, tmp_path, registry):
    lora = adapters("lora")
    out = run(
        "push",
        lora,
        "--name",
        "team/sql",
        "--task",
        "sql",
        "--tag",
        "team=nlp",
        "--metric",
        "exact_match=0.71@spider",
    )
    card = registry.show("team/sql")
    assert out.stdout == (
        f"Pushed team/sql@v1 ({card.commit[:10]}): lora, rank 8, {card.size_bytes / 1024:.1f} KB\n"
    )
    again = run("push", lora, "--name", "team/sql")
    assert again.stdout == f"Unchanged: team/sql@v1 ({card.commit[:10]}) already has these files\n"

    listed = json.loads(run("ls", "--json").stdout)
    assert [c["repo"] for c in listed] == ["team/sql"]
    assert listed[0]["metrics"] == [
        {
            "name": "exact_match",
            "value": 0.71,
            "dataset": "spider",
            "source": "push",
            "n": None,
            "stderr": None,
            "ci95": None,
            "higher_is_better": True,
            "eval_id": None,
        }
    ]  # fmt: skip  (every metric says its direction: from the name when not given)
    assert listed[0]["method"] == "lora" and listed[0]["rank"] == 8

    table = run("ls").stdout.splitlines()
    assert table[0].split() == [
        "ADAPTER",
        "METHOD",
        "RANK",
        "BASE",
        "TASKS",
        "SIZE",
        "COMMIT",
        "ALIASES",
    ]
    assert table[1].startswith("team/sql@v1  lora    8     ")

    shown = json.loads(run("show", "team/sql", "--json").stdout)
    assert shown["commit"] == card.commit and shown["tags"] == {"team": "nlp"}
    human = run("show", "team/sql").stdout
    assert "method            lora\n" in human and "rank              8\n" in human

    assert run("tag", "team/sql@v1", "prod").stdout == f"team/sql@prod -> v1 ({card.commit[:10]})\n"
    dest = tmp_path / "pulled"
    assert run("pull", "team/sql@prod", "-o", dest).stdout == f"Pulled team/sql@prod into {dest}\n"
    assert (dest / "adapter_model.safetensors").read_bytes() == (
        lora / "adapter_model.safetensors"
    ).read_bytes()
    versions = json.loads(run("show", "team/sql", "--versions", "--json").stdout)
    assert [v["version"] for v in versions] == [1]
    assert run("verify").stdout.endswith("Registry is healthy.\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["pull", "team/none"],
            "Error: no adapter named 'team/none' in the registry at {home}"
            " (list adapters with `hub ls`)",
        ),
        (
            ["pull", "team/sql@v5"],
            "Error: team/sql has no revision 'v5' (latest is v1; list"
            " versions with `hub show team/sql --versions`)",
        ),
        (["show", "../x"], "Error: invalid repository id '../x': the namespace contains '..'"),
        (
            ["ls", "--rank", "big"],
            "Error: invalid --rank 'big': use N, LOW..HIGH, <=N, <N, >=N or >N (e.g. 8..16)",
        ),
        (
            ["push", "{lora}", "--name", "a//b"],
            "Error: invalid repository id 'a//b': expected 'namespace/name'",
        ),
        (
            ["push", "{lora}", "--name", "a/b", "--tag", "novalue"],
            "Error: invalid --tag 'novalue': expected KEY=VALUE, e.g. team=nlp",
        ),
        (
            ["tag", "team/sql", "v2"],
            "Error: invalid alias 'v2': it would shadow 'main', a version (v3) or a commit id",
        ),
    ],
)
@pytest.mark.usefixtures("deployment")  # embedded, then team (PostgreSQL + S3)
def test_errors_are_one_line_and_change_nothing(run, adapters, hub_home, args, message):
    lora = adapters("lora")
    run("push", lora, "--name", "team/sql")
    before = json.loads(run("ls", "--json", "--all-versions").stdout)
    result = run(*[a.format(lora=lora) for a in args], ok=False)
    assert result.exit_code == 1
    assert result.stderr == message.format(home=hub_home) + "\n"
    assert result.stdout == ""
    assert json.loads(run("ls", "--json", "--all-versions").stdout) == before


@pytest.mark.usefixtures("deployment")  # embedded, then team (PostgreSQL + S3)
def test_pull_into_existing_folder_is_refused(run, adapters, tmp_path):
    run("push", adapters("lora"), "--name", "team/sql")
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    result = run("pull", "team/sql", "-o", dest, ok=False)
    assert result.stderr == (
        f"Error: {dest} already exists and is not empty (choose another -o or pass --force)\n"
    )
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


@pytest.mark.usefixtures("deployment")  # embedded, then team (PostgreSQL + S3)
def test_verify_reports_corruption_and_gc_cleans(run, adapters, registry, tmp_path):
    lora = adapters("lora")
    run("push", lora, "--name", "team/sql")
    weights = {f.path: f for f in registry.show("team/sql").files}["adapter_model.safetensors"]
    data = bytearray(registry.store.read_bytes(weights.sha256))
    data[-1] ^= 0xFF
    overwrite_blob(registry.store, weights.sha256, bytes(data))
    result = run("verify", ok=False)
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: blob {weights.sha256[:12]} is corrupted; affected: team/sql@v1"
        " (adapter_model.safetensors)\n"
    )
    report = json.loads(run("verify", "--json", ok=False).stdout)
    assert report["healthy"] is False and report["problems"][0]["status"] == "corrupted"

    copy = tmp_path / "copy"
    shutil.copytree(lora, copy)
    (copy / "README.md").write_text("other")
    run("push", copy, "--name", "team/other")
    run("rm", "team/other")
    gc = json.loads(run("gc", "--json").stdout)
    assert gc["blobs_removed"] == 1


def test_help_texts_have_examples(run):
    for command in ["push", "pull", "ls", "show", "rm", "tag", "verify", "gc", "convert"]:
        assert "Example:" in run(command, "--help").stdout, command
