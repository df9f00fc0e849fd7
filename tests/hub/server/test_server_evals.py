"""Eval records through a real `hub serve` process: the API returns them, `hub show --from`
lists them, `hub eval --from` posts a record back with a write token and keeps it locally
without one, `--from` without read scope is one Error line; imports and `--with-evals` travel
with push and pull."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from click.testing import CliRunner

from cli.main import cli
from hub import Registry
from hub.tokens import create_token
from tests.hub.server.test_slow_clients import serve


def test_eval_records_through_the_server(hub_home, trained, tmp_path):
    base, lora, _, data = trained
    server_home = tmp_path / "server-home"
    with Registry(server_home) as reg:
        writer = create_token(reg, "writer", read=["team"], write=["team"])
        reader = create_token(reg, "reader", read=["team"], write=[])
        other = create_token(reg, "other", read=["elsewhere"], write=[])
    folder = tmp_path / "run"
    shutil.copytree(lora, folder)
    (folder / "all_results.json").write_text(json.dumps({"eval_loss": 2.5, "epoch": 1.0}))
    runner = CliRunner()

    def hub(token, *args):
        return runner.invoke(cli, list(args), env={"HUB_TOKEN": token})

    with serve(server_home) as (port, _):
        url = f"http://127.0.0.1:{port}"
        pushed = hub(writer, "push", str(folder), "--name", "team/srv", "--to", url)
        assert pushed.exit_code == 0, pushed.output
        [imported] = json.loads(hub(reader, "show", "team/srv", "--from", url, "--json").stdout)[
            "evals"
        ]  # the import travelled with the push: the server read all_results.json
        assert (imported["source"], imported["origin"]["file"]) == ("trainer", "all_results.json")

        # A write token: the record is posted back onto the exact version.
        args = ["eval", "team/srv", "--from", url, "--data", str(data), "--base", str(base)]
        result = hub(writer, *args, "--json")
        assert result.exit_code == 0, result.output
        [posted] = json.loads(result.stdout)
        assert posted["remote"] == {"url": url, "posted": True}
        assert result.stderr.endswith(
            f"Recorded {posted['id']} on {posted['ref']} at {url} (held-out.jsonl,"
            f" {posted['seconds']:.1f}s)\n"
        )
        shown = json.loads(hub(reader, "show", "team/srv", "--from", url, "--json").stdout)
        assert [e["id"] for e in shown["evals"]] == [imported["id"], posted["id"]]
        server_record = shown["evals"][1]
        assert server_record["metrics"] == posted["metrics"]
        assert server_record["ref"] == posted["ref"] and server_record["commit"] == shown["commit"]
        [ce] = [m for m in shown["metrics"] if m["name"] == "cross_entropy"]
        assert (ce["source"], ce["eval_id"]) == ("hub-eval", posted["id"])
        # Search on the server applies the same metric rule.
        cut = posted["metrics"]["cross_entropy"]["value"] + 0.01
        found = hub(reader, "ls", "--from", url, "--where", f"metric:cross_entropy<{cut}", "--json")
        assert [c["repo"] for c in json.loads(found.stdout)] == ["team/srv"]
        found = hub(reader, "ls", "--from", url, "--where", "metric:cross_entropy<0.001", "--json")
        assert json.loads(found.stdout) == []

        # A read-only token: scored here, kept locally, and `hub show --from` says so.
        result = hub(reader, *args, "--no-base", "--json")
        assert result.exit_code == 0, result.output
        [kept] = json.loads(result.stdout)
        reason = "token 'reader' may not write to any namespace"
        assert kept["remote"] == {"url": url, "posted": False, "reason": reason}
        assert f"Recorded {kept['id']} on {kept['ref']} locally ({url} refused it: {reason})" in (
            result.stderr
        )
        shown = json.loads(hub(reader, "show", "team/srv", "--from", url, "--json").stdout)
        assert [e["id"] for e in shown["evals"]] == [imported["id"], posted["id"], kept["id"]]
        text = hub(reader, "show", "team/srv", "--from", url).stdout
        assert f"  {kept['id']}  hub-eval  held-out.jsonl sha256:" in text
        assert "(kept locally: the server refused it)" in text
        assert (
            len(
                json.loads(hub(writer, "show", "team/srv", "--from", url, "--json").stdout)["evals"]
            )
            == 3
        )  # fmt: skip  (the server holds two; the third is this machine's)
        with Registry(hub_home) as local:
            assert local.gc().blobs_removed == 0  # the kept record's blobs are referenced
            assert local.verify().healthy

        # No read scope: one Error line, nothing scored or recorded.
        for command in (args, ["show", "team/srv", "--from", url]):
            result = hub(other, *command)
            assert (result.exit_code, result.stderr) == (
                1,
                "Error: token 'other' may not read namespace 'team'\n",
            )
        with Registry(hub_home) as local:
            count = local.catalog.conn.execute("SELECT count(*) FROM remote_evals").fetchone()[0]
            assert count == 1

        # The results travel with a pull as model-index.
        out = tmp_path / "pulled"
        result = hub(reader, "pull", "team/srv", "--from", url, "-o", str(out), "--with-evals")
        assert result.exit_code == 0, result.output
        front = yaml.safe_load((out / "README.md").read_text().split("---\n")[1])
        [result_entry] = front["model-index"][0]["results"]
        assert result_entry["dataset"]["type"] == "held-out.jsonl"
        values = {m["type"]: m["value"] for m in result_entry["metrics"]}
        assert values == {
            "cross_entropy": posted["metrics"]["cross_entropy"]["value"],
            "perplexity": posted["metrics"]["perplexity"]["value"],
        }


def test_post_eval_refuses_unproven_blobs_and_bad_records(hub_home, trained, tmp_path):
    from hub.remote import RemoteRegistry
    from schemas.errors import InvalidArgument

    _, lora, _, _ = trained
    server_home = tmp_path / "server-home"
    with Registry(server_home) as reg:
        writer = create_token(reg, "writer", read=["team"], write=["team"])
    with serve(server_home) as (port, _):
        client = RemoteRegistry(f"http://127.0.0.1:{port}", token=writer)
        card, _ = client.push(lora, name="team/strict")
        record = {
            "id": "ev-0123456789ab",
            "ref": card.ref,
            "commit": card.commit,
            "source": "hub-eval",
            "dataset": {"sha256": "a" * 64, "rows": 6, "kind": "text", "name": "x.jsonl"},
            "metrics": {"cross_entropy": {"value": 1.0, "n": 6, "higher_is_better": False}},
            "results_sha256": "b" * 64,
            "created_at": "2026-01-01T00:00:00+00:00",
        }
        path = "/api/hub/v1/adapters/team/strict/evals"
        try:
            client._json("POST", path, {"record": record})
        except InvalidArgument as error:
            assert str(error) == (
                "blob aaaaaaaaaaaa of eval record ev-0123456789ab is not uploaded yet"
                " (send it with PUT /blobs/SHA256, then post again)"
            )
        else:
            raise AssertionError("an unproven blob was accepted")
        bad = {**record, "metrics": {"x": {"value": "nan", "higher_is_better": True}}}
        try:
            client._json("POST", path, {"record": bad})
        except InvalidArgument as error:
            assert str(error).startswith("invalid request: body.record.metrics.x.value: ")
        else:
            raise AssertionError("a non-finite metric was accepted")
        assert client.evals("team/strict") == []


GENERAL = ["the quick brown fox jumps over the lazy dog", "vllm serves many loras on one base"]


def test_eval_forgetting_from_a_team_hub(hub_home, trained, tmp_path):
    """--forgetting with --from: the general text is local, the adapter the server's; the
    result (and its two blobs) go to the server with a write token, stay here without one,
    and equal a local eval of the same files."""
    base, lora, _, data = trained
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"text": t}) + "\n" for t in GENERAL))
    server_home = tmp_path / "server-home"
    with Registry(server_home) as reg:
        writer = create_token(reg, "writer", read=["team"], write=["team"])
        reader = create_token(reg, "reader", read=["team"], write=[])
    runner = CliRunner()

    def hub(token, *args):
        return runner.invoke(cli, list(args), env={"HUB_TOKEN": token})

    args = ["--data", str(data), "--base", str(base), "--forgetting", str(general), "--json"]
    with serve(server_home) as (port, _):
        url = f"http://127.0.0.1:{port}"
        assert hub(writer, "push", str(lora), "--name", "team/fg", "--to", url).exit_code == 0
        result = hub(writer, "eval", "team/fg", "--from", url, *args)
        assert result.exit_code == 0, result.output
        [posted] = json.loads(result.stdout)
        assert posted["remote"] == {"url": url, "posted": True}
        forgot = posted["forgetting"]
        [on_server] = json.loads(hub(reader, "show", "team/fg", "--from", url, "--json").stdout)[
            "evals"
        ]
        assert on_server["forgetting"] == forgot

        result = hub(reader, "eval", "team/fg", "--from", url, *args)
        assert result.exit_code == 0, result.output
        [kept] = json.loads(result.stdout)
        assert kept["remote"]["posted"] is False
        assert kept["forgetting"]["value"] == pytest.approx(forgot["value"], abs=1e-9)
    with Registry(server_home) as reg:  # the server holds the text and the per-document sums
        assert reg.store.path(forgot["dataset"]["sha256"]).read_bytes() == general.read_bytes()
        rows = reg.store.path(forgot["results_sha256"]).read_text().splitlines()
        assert len(rows) == len(GENERAL)
        assert reg.gc().blobs_removed == 0 and reg.verify().healthy
    with Registry(hub_home) as local:  # and so does this machine for the record it kept
        assert local.store.has(kept["forgetting"]["results_sha256"])
        assert local.gc().blobs_removed == 0 and local.store.has(forgot["dataset"]["sha256"])
        # The same files evaluated locally give the same forgetting.
        local.push(lora, name="team/fg")
        [here] = local.evaluate("team/fg", data, base=str(base), forgetting=general, with_base=True)
    assert here["forgetting"]["value"] == pytest.approx(forgot["value"], abs=1e-9)
    assert here["forgetting"]["ci95"] == pytest.approx(forgot["ci95"], abs=1e-9)


def test_eval_from_a_team_hub_that_fails_part_way_posts_nothing(hub_home, trained, tmp_path):
    from peft import OFTConfig

    from tests.compose.deploy.models import make_adapter, make_base

    base, lora, _, data = trained
    wide = make_base(tmp_path / "wide", hidden=96, heads=4, kv_heads=2, tokenizer="bpe")
    oft = make_adapter(
        tmp_path / "oft", wide,
        OFTConfig(task_type="CAUSAL_LM", r=0, oft_block_size=4, target_modules=["q_proj"]),
    )  # fmt: skip
    server_home = tmp_path / "server-home"
    with Registry(server_home) as reg:
        writer = create_token(reg, "writer", read=["team"], write=["team"])
    runner = CliRunner()

    def hub(*args):
        return runner.invoke(cli, list(args), env={"HUB_TOKEN": writer})

    with serve(server_home) as (port, _):
        url = f"http://127.0.0.1:{port}"
        for folder, name in ((lora, "team/good"), (oft, "team/wide")):
            assert hub("push", str(folder), "--name", name, "--to", url).exit_code == 0
        commit = json.loads(hub("show", "team/wide", "--from", url, "--json").stdout)["commit"]
        # team/good is scored first, then team/wide fails to load: nothing goes to the server.
        args = ["eval", "team/good", "team/wide", "--from", url, "--data", str(data), "--base",
                str(base)]  # fmt: skip
        result = hub(*args)
        assert (result.exit_code, result.stderr) == (
            1,
            f"Error: team/wide@{commit} does not fit the base {base.resolve()}: tensor"
            " model.layers.0.self_attn.q_proj.oft_R.weight is [24, 6] in the adapter, but the"
            " base needs [16, 6]\n",
        )
        assert json.loads(hub("show", "team/good", "--from", url, "--json").stdout)["evals"] == []
    with Registry(hub_home) as local:  # nor is anything kept here (records, base scores)
        for table in ("remote_evals", "evals", "base_scores"):
            assert local.catalog.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0


def test_trainer_state_travels_with_a_push_to_the_server(hub_home, adapters, tmp_path):
    # trainer_state.json and the checkpoint folders are training state: only the adapter's
    # files are uploaded. What they say (the step the weights are from, the best metric, the
    # history) is read here and sent with the push, so the server's version has the same
    # trainer record, tags and card metrics as a local push of the folder.
    from tests.hub.test_trainer_folders import _output_dir, _state

    out = _output_dir(tmp_path, adapters, _state(),
                      {20: adapters("lora"), 30: adapters("dora")})  # fmt: skip
    results = {"eval_loss": 0.61, "eval_samples": 200, "train_loss": 0.93}
    (out / "all_results.json").write_text(json.dumps(results))
    with Registry(tmp_path / "local-home") as local:
        expected = local.push(out, name="team/best").card
        expected_records = local.evals("team/best")
    server_home = tmp_path / "server-home"
    with Registry(server_home) as reg:
        writer = create_token(reg, "writer", read=["team"], write=["team"])
    runner = CliRunner()
    with serve(server_home) as (port, _):
        url = f"http://127.0.0.1:{port}"
        env = {"HUB_TOKEN": writer}
        pushed = runner.invoke(cli, ["push", str(out), "--name", "team/best", "--to", url], env=env)
        assert pushed.exit_code == 0, pushed.output
        shown = json.loads(
            runner.invoke(cli, ["show", "team/best", "--from", url, "--json"], env=env).stdout
        )
    assert shown["commit"] == expected.commit  # the same files: trainer_state.json left out
    assert shown["tags"] == {"step": "20"}
    assert shown["details"]["trainer"] == expected.details["trainer"]
    assert [(m["name"], m["value"], m["n"]) for m in shown["metrics"]] == [
        (m.name, m.value, m.n) for m in expected.metrics
    ]
    state, results = shown["evals"]
    assert state["origin"]["file"] == "trainer_state.json"
    assert state["trainer"] == expected_records[0]["trainer"]
    assert state["trainer"]["best"]["these_weights"] is True
    assert state["metrics"] == expected_records[0]["metrics"]
    assert results["metrics"] == expected_records[1]["metrics"]
