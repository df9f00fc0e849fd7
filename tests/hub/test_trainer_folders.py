"""A real ``transformers.Trainer`` output_dir: push takes only the adapter; --checkpoints pushes
each checkpoint as a version in step order with its step and logged metrics."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from schemas import InvalidAdapter, InvalidArgument
from tests.factories import TINY_LLAMA, load_base, make_base, peft_logits

VOCAB = 300  # the byte-level BPE tokenizer saved beside the adapter needs 256 + specials
ADAPTER_FILES = [
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """OUTPUT_DIR of 6 Trainer steps of a LoRA on a tiny Llama, saving and evaluating every 2
    steps (checkpoint-2, -4, -6), then ``save_model`` of the final adapter into OUTPUT_DIR."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, default_data_collator

    from tests.compose.deploy.models import train_bpe

    root = tmp_path_factory.mktemp("trainer")
    base = make_base(root / "base", vocab_size=VOCAB)
    tokenizer_dir = root / "tokenizer"
    train_bpe(tokenizer_dir, vocab_size=VOCAB)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = load_base(base)
    model.name_or_path = model.config._name_or_path = str(base)
    peft_model = get_peft_model(
        model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj"])
    )
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, VOCAB, (12,), generator=generator) for _ in range(16)]
    train = [{"input_ids": r, "labels": r} for r in rows[:12]]
    evaluation = [{"input_ids": r, "labels": r} for r in rows[12:]]
    out = root / "output_dir"
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=5e-2,
        logging_steps=1,
        save_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=peft_model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,  # saved beside each checkpoint's adapter
        data_collator=default_data_collator,  # equal-length rows: no padding
    )
    trainer.train()
    trainer.save_model(str(out))
    return out, base


def _sizes(folder):
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_trainer_output_dir_holds_checkpoints_and_training_state(trained):
    out, _ = trained
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-6",
    ]
    names = {p.name for p in (out / "checkpoint-4").iterdir()}
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"} <= names
    assert "trainer_state.json" in names


def test_push_output_dir_stores_only_the_adapter(trained, registry):
    out, _ = trained
    result = registry.push(out, name="team/run")
    card = result.card
    assert sorted(f.path for f in card.files) == ADAPTER_FILES
    assert result.left_out == [
        "checkpoint-2/",
        "checkpoint-4/",
        "checkpoint-6/",
        "training_args.bin",
    ]
    assert card.size_bytes == sum(f.size for f in card.files)
    assert card.size_bytes == sum((out / name).stat().st_size for name in ADAPTER_FILES)
    left_out = sum(
        _sizes(out / p) if p.endswith("/") else (out / p).stat().st_size for p in result.left_out
    )
    assert _sizes(out) == card.size_bytes + left_out  # before: all of it was stored
    assert left_out > 8 * card.size_bytes
    assert (card.method, card.rank, card.target_modules) == ("lora", 4, ["q_proj"])


def test_push_checkpoint_folder_leaves_out_optimizer_and_rng(trained, registry):
    out, _ = trained
    result = registry.push(out / "checkpoint-4", name="team/ckpt", metrics=["acc=0.5"])
    card = result.card
    assert sorted(f.path for f in card.files) == ADAPTER_FILES
    assert card.tags == {"step": "4"}
    assert (card.metrics[0].name, card.metrics[0].source) == ("acc", "push")
    assert {m.name: m.value for m in card.metrics[1:]} == _logged(out / "checkpoint-4", 4)
    again = registry.push(out / "checkpoint-4", name="team/ckpt")
    assert not again.created
    assert again.card.metrics == card.metrics  # the trainer's metrics are not repeated
    assert result.left_out == [
        "optimizer.pt",
        "rng_state.pth",
        "scheduler.pt",
        "trainer_state.json",
        "training_args.bin",
    ]


def _logged(checkpoint, step):
    """The test's own reading of trainer_state.json: every numeric value logged at ``step``
    but the run's bookkeeping."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == step
    skip = {"step", "epoch", "learning_rate", "grad_norm", "total_flos"}
    values = {}
    for entry in state["log_history"]:
        if entry["step"] == step:
            values.update(
                {
                    k: v
                    for k, v in entry.items()
                    if k not in skip
                    and not k.endswith(("_runtime", "_per_second"))
                    and isinstance(v, int | float)
                }
            )
    return values


def test_push_checkpoints_one_version_per_step_with_metrics(trained, registry, tmp_path):
    out, base = trained
    results = registry.push_checkpoints(out, name="team/run", tasks=["sql"])
    cards = [r.card for r in results]
    assert [(c.version, c.tags["step"]) for c in cards] == [(1, "2"), (2, "4"), (3, "6")]
    assert all(r.created for r in results)
    for card, step in zip(cards, (2, 4, 6), strict=True):
        expected = _logged(out / f"checkpoint-{step}", step)
        assert {"loss", "eval_loss"} <= set(expected)
        assert {m.name: m.value for m in card.metrics} == expected
        assert {m.source for m in card.metrics} == {"trainer"}
        assert card.details["trainer"] == {
            "global_step": step,
            "checkpoint": f"checkpoint-{step}",
            "epoch": pytest.approx(step / 3),
        }
        assert card.tasks == ["sql"]
        assert sorted(f.path for f in card.files) == ADAPTER_FILES
    assert [c.version for c in registry.search(all_versions=True, sort="+created")] == [1, 2, 3]

    pulled = registry.pull("team/run@v2", tmp_path / "v2")
    ids = torch.randint(
        0, TINY_LLAMA["vocab_size"], (1, 8), generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(
        peft_logits(base, pulled, ids), peft_logits(base, out / "checkpoint-4", ids), atol=0, rtol=0
    )

    again = registry.push_checkpoints(out, name="team/run")
    assert [(r.created, r.card.version) for r in again] == [(False, 1), (False, 2), (False, 3)]
    assert len(registry.versions("team/run")) == 3
    assert [len(c.metrics) for c in registry.versions("team/run")] == [
        len(c.metrics) for c in cards
    ]


def test_push_checkpoints_all_or_nothing(trained, registry, tmp_path):
    out, _ = trained
    broken = tmp_path / "run"
    shutil.copytree(out, broken)
    (broken / "checkpoint-6" / "adapter_config.json").write_text("{")
    with pytest.raises(InvalidAdapter) as info:
        registry.push_checkpoints(broken, name="team/run")
    assert str(info.value) == (
        f"{broken / 'checkpoint-6'}: adapter_config.json is not valid JSON (line 1, column 2:"
        " Expecting property name enclosed in double quotes)"
    )
    assert registry.search_raw() == []


def test_push_checkpoints_refuses_metric(trained, registry):
    out, _ = trained
    with pytest.raises(InvalidArgument) as info:
        registry.push_checkpoints(out, name="team/run", metrics=["acc=0.5"])
    assert str(info.value) == (
        "--metric cannot be combined with --checkpoints: each checkpoint's metrics come from"
        " its trainer_state.json; push one checkpoint folder to give it --metric"
    )


def test_cli_push_checkpoints_and_output_dir_without_adapter(trained, hub_home, tmp_path):
    out, _ = trained
    only_checkpoints = tmp_path / "run"
    shutil.copytree(
        out,
        only_checkpoints,
        ignore=lambda d, names: (
            [] if d != str(out) else [n for n in names if not n.startswith("checkpoint-")]
        ),
    )
    runner = CliRunner()
    refused = runner.invoke(cli, ["push", str(only_checkpoints), "--name", "team/run"])
    assert refused.exit_code == 1
    assert refused.stderr == (
        f"Error: {only_checkpoints} is a Trainer output folder with checkpoints (checkpoint-2,"
        " checkpoint-4, checkpoint-6) but no adapter of its own: push every checkpoint as a"
        f" version with `hub push {only_checkpoints} --checkpoints`, or one with"
        f" `hub push {only_checkpoints / 'checkpoint-6'}`\n"
    )

    pushed = runner.invoke(
        cli, ["push", str(only_checkpoints), "--checkpoints", "--name", "team/run"]
    )
    assert pushed.exit_code == 0, pushed.output
    lines = pushed.stdout.splitlines()
    assert len(lines) == 4
    for version, (line, step) in enumerate(zip(lines, (2, 4, 6), strict=False), start=1):
        logged = _logged(out / f"checkpoint-{step}", step)
        assert line.startswith(f"Pushed team/run@v{version} (")
        assert ": lora, rank 4, " in line
        assert line.endswith(
            f", step {step}" + "".join(f", {k}={v:.4g}" for k, v in sorted(logged.items()))
        )
    assert lines[3] == (
        "Left out training state in each checkpoint: optimizer.pt, rng_state.pth, scheduler.pt,"
        " trainer_state.json, training_args.bin"
    )

    again = runner.invoke(
        cli, ["push", str(only_checkpoints), "--checkpoints", "--name", "team/run", "--json"]
    )
    assert again.exit_code == 0, again.output
    listed = json.loads(again.stdout)
    assert [(c["version"], c["created"], c["tags"]["step"]) for c in listed] == [
        (1, False, "2"),
        (2, False, "4"),
        (3, False, "6"),
    ]

    root = runner.invoke(cli, ["push", str(out), "--name", "team/final"])
    assert root.exit_code == 0, root.output
    assert root.stdout.splitlines()[1] == (
        "Left out training state: checkpoint-2/, checkpoint-4/, checkpoint-6/, training_args.bin"
        f" (push the checkpoints as versions with `hub push {out} --checkpoints`)"
    )


def test_readme_trainer_commands_run_as_written(trained, registry, tmp_path):
    import os
    import sys

    from tests.hub.test_convert_formats import _mlx_adapter, _tune_adapter
    from tests.test_readme import ROOT, _blocks, _run_block

    out, base = trained
    shutil.copytree(out, tmp_path / "out" / "run-1")
    shutil.copytree(base, tmp_path / "models" / "llama")
    _mlx_adapter(tmp_path / "mlx-run" / "adapters", base)
    _tune_adapter(tmp_path / "tune-out" / "epoch_0", "pt")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "hub").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cli.main "$@"\n')
    (tmp_path / "bin" / "hub").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
    }
    (block,) = _blocks("bash", "## Folders from trainers")
    _run_block(block, tmp_path, env)
    assert [c.tags["step"] for c in registry.versions("team/sql-lora")] == ["2", "4", "6"]
    assert registry.show("team/mlx-sql").alpha == 10.0
    assert registry.show("team/tune-sql").rank == 4


def test_trainer_state_metrics_at_the_step_without_bookkeeping(tmp_path):
    from hub.checkpoints import read_trainer_state

    folder = tmp_path / "checkpoint-20"
    folder.mkdir()
    state = {
        "global_step": 20,
        "epoch": 2.0,
        "log_history": [
            {"step": 10, "loss": 3.0, "learning_rate": 1e-4, "grad_norm": 1.5, "epoch": 1.0},
            {"step": 20, "loss": 2.5, "learning_rate": 5e-5, "grad_norm": 1.2, "epoch": 2.0},
            {
                "step": 20,
                "epoch": 2.0,
                "eval_loss": 2.75,
                "eval_accuracy": 0.5,
                "eval_runtime": 0.1,
                "eval_samples_per_second": 40.0,
                "eval_steps_per_second": 10.0,
                "eval_note": "text is not a metric",
            },
        ],
    }
    (folder / "trainer_state.json").write_text(json.dumps(state))
    trained = read_trainer_state(folder)
    assert trained is not None
    assert (trained.step, trained.epoch) == (20, 2.0)
    assert [(m.name, m.value, m.source) for m in trained.metrics] == [
        ("eval_accuracy", 0.5, "trainer"),
        ("eval_loss", 2.75, "trainer"),
        ("loss", 2.5, "trainer"),
    ]
    assert read_trainer_state(tmp_path) is None

    (folder / "trainer_state.json").write_text('{"global_step": "20"}')
    with pytest.raises(InvalidAdapter) as info:
        read_trainer_state(folder)
    assert str(info.value) == (
        f"{folder / 'trainer_state.json'}: field 'global_step' must be an integer, got '20'"
    )


def _state(**fields):
    """A trainer_state.json of a run to step 30, evaluated every 10 steps, best at step 20."""
    history = []
    for step, loss, eval_loss, accuracy in ((10, 1.2, 0.7, 0.5), (20, 0.9, 0.61, 0.6),
                                            (30, 0.7, 0.65, 0.55)):  # fmt: skip
        history.append({"step": step, "epoch": step / 10, "loss": loss, "learning_rate": 1e-4,
                        "grad_norm": 1.0})  # fmt: skip
        history.append({"step": step, "epoch": step / 10, "eval_loss": eval_loss,
                        "eval_accuracy": accuracy, "eval_runtime": 0.1,
                        "eval_samples_per_second": 40.0})  # fmt: skip
    return {"global_step": 30, "epoch": 3.0, "log_history": history, "best_metric": 0.61,
            "best_global_step": 20, "best_model_checkpoint": "out/run/checkpoint-20",
            **fields}  # fmt: skip


EVALS = [
    {"step": 10, "epoch": 1.0, "eval_loss": 0.7, "eval_accuracy": 0.5},
    {"step": 20, "epoch": 2.0, "eval_loss": 0.61, "eval_accuracy": 0.6},
    {"step": 30, "epoch": 3.0, "eval_loss": 0.65, "eval_accuracy": 0.55},
]


def test_trainer_state_best_metric_and_history(tmp_path):
    from hub.checkpoints import read_trainer_state

    folder = tmp_path / "checkpoint-30"
    folder.mkdir()
    (folder / "trainer_state.json").write_text(json.dumps(_state()))
    trained = read_trainer_state(folder)
    assert trained is not None
    assert (trained.step, trained.weights_step) == (30, 30)  # a checkpoint: its own step
    assert {m.name: m.value for m in trained.metrics} == {
        "eval_accuracy": 0.55,
        "eval_loss": 0.65,
        "loss": 0.7,
    }
    # trainer_state.json does not name metric_for_best_model: the name is the key logged at
    # best_global_step with best_metric's value.
    assert trained.best == {"name": "eval_loss", "value": 0.61, "step": 20,
                            "checkpoint": "checkpoint-20", "these_weights": False}  # fmt: skip
    assert trained.history == EVALS
    assert trained.notes == [
        "the best eval_loss (0.61) was reached at step 20 (checkpoint-20), not by these"
        " weights (step 30)"
    ]
    assert trained.details() == {"global_step": 30, "checkpoint": "checkpoint-30", "epoch": 3.0}

    # Two keys with the value at that step, or none: `best_metric`, and a note says why.
    state = _state()
    state["log_history"][3]["eval_accuracy"] = 0.61
    (folder / "trainer_state.json").write_text(json.dumps(state))
    trained = read_trainer_state(folder)
    assert trained.best["name"] == "best_metric" and trained.best["step"] == 20
    assert trained.notes[0] == (
        "best_metric 0.61 is not named: eval_accuracy, eval_loss all logged it at step 20"
        " (the file does not say metric_for_best_model)"
    )
    (folder / "trainer_state.json").write_text(json.dumps(_state(best_metric=0.5)))
    assert read_trainer_state(folder).notes[0] == (
        "best_metric 0.5 is not named: no value logged at step 20 equals it (the file does not"
        " say metric_for_best_model)"
    )
    # Written before best_global_step existed: the step comes from best_model_checkpoint.
    old = _state()
    del old["best_global_step"]
    (folder / "trainer_state.json").write_text(json.dumps(old))
    assert read_trainer_state(folder).best["step"] == 20
    (folder / "trainer_state.json").write_text(json.dumps(_state(best_global_step="20")))
    with pytest.raises(InvalidAdapter) as info:
        read_trainer_state(folder)
    assert str(info.value) == (
        f"{folder / 'trainer_state.json'}: field 'best_global_step' must be an integer or null,"
        " got '20'"
    )


def _output_dir(tmp_path, adapters, state, checkpoints):
    """An output_dir after save_model and save_state: the adapter, trainer_state.json, and
    ``checkpoints`` (step -> the adapter folder whose weights that checkpoint holds)."""
    out = tmp_path / "run"
    shutil.copytree(adapters("lora"), out)
    (out / "trainer_state.json").write_text(json.dumps(state))
    for step, source in checkpoints.items():
        (out / f"checkpoint-{step}").mkdir()
        shutil.copy(source / "adapter_model.safetensors", out / f"checkpoint-{step}")
    return out


@pytest.mark.usefixtures("deployment")  # embedded, then team (PostgreSQL + S3)
def test_push_output_dir_with_the_best_checkpoint_loaded(registry, adapters, tmp_path):
    # load_best_model_at_end: the adapter save_model wrote is checkpoint-20's (byte for byte),
    # so the values logged at step 20 are its metrics, not step 30's.
    out = _output_dir(tmp_path, adapters, _state(),
                      {20: adapters("lora"), 30: adapters("dora")})  # fmt: skip
    (out / "all_results.json").write_text(
        json.dumps({"eval_loss": 0.61, "eval_samples": 200, "train_loss": 0.93})
    )
    card = registry.push(out, name="team/best").card
    assert card.tags == {"step": "20"}
    assert card.details["trainer"] == {"global_step": 30, "checkpoint": "run", "epoch": 3.0,
                                       "weights_step": 20}  # fmt: skip
    assert [(m.name, m.value, m.n, m.source) for m in card.metrics] == [
        ("eval_accuracy", 0.6, None, "trainer"),
        ("eval_loss", 0.61, 200, "trainer"),  # all_results.json repeats it: its n is kept
        ("loss", 0.9, None, "trainer"),
        ("train_loss", 0.93, None, "trainer"),
    ]
    state, results = registry.evals("team/best")
    assert state["origin"]["file"] == "trainer_state.json"
    assert results["origin"]["file"] == "all_results.json"
    assert list(results["metrics"]) == ["train_loss"]
    assert state["metrics"]["eval_loss"] == {"value": 0.61, "n": 200, "stderr": None,
                                             "ci95": None, "higher_is_better": False}  # fmt: skip
    assert state["trainer"] == {
        "global_step": 30,
        "step": 20,
        "best": {
            "name": "eval_loss",
            "value": 0.61,
            "step": 20,
            "checkpoint": "checkpoint-20",
            "these_weights": True,
        },
        "log_history": EVALS,
        "notes": [
            "these weights are step 20's, the best checkpoint's (the same"
            " adapter_model.safetensors as checkpoint-20/): the Trainer loaded it at the end;"
            " training ran to step 30"
        ],
    }
    assert {m.eval_id for m in card.metrics} == {state["id"], results["id"]}


def test_push_output_dir_whose_weights_cannot_be_told(hub_home, adapters, tmp_path):
    # No checkpoint folder holds the same weights: step 30's or (load_best_model_at_end)
    # step 20's. Nothing logged goes on the card; the record keeps the best and the history.
    out = _output_dir(tmp_path, adapters, _state(), {30: adapters("dora")})
    runner = CliRunner()
    result = runner.invoke(cli, ["push", str(out), "--name", "team/unsure"])
    assert result.exit_code == 0, result.output
    shown = json.loads(runner.invoke(cli, ["show", "team/unsure", "--json"]).stdout)
    assert shown["metrics"] == [] and shown["tags"] == {}
    assert shown["details"]["trainer"]["weights_step"] is None
    [record] = shown["evals"]
    assert (record["source"], record["metrics"], record["trainer"]["step"]) == ("trainer", {}, None)
    assert record["trainer"]["best"]["these_weights"] is None
    assert record["trainer"]["log_history"] == EVALS
    assert record["trainer"]["notes"] == [
        "these weights are step 30's, or step 20's if the Trainer loaded the best checkpoint"
        " at the end (load_best_model_at_end, in training_args.bin, which is not read); no"
        " checkpoint-20/ or checkpoint-30/ here holds the same adapter_model.safetensors, so no"
        " logged value is put on the card"
    ]
    shown_text = runner.invoke(cli, ["show", "team/unsure"]).stdout
    assert (
        "    trainer: weights of step ? of 30; best eval_loss=0.61 at step 20; 3 evaluations"
        " logged\n    note: these weights are step 30's, or step 20's if"
    ) in shown_text
    # The weights are step 30's: its values, and the best is another step's.
    out30 = _output_dir(tmp_path / "b", adapters, _state(), {30: adapters("lora")})
    assert runner.invoke(cli, ["push", str(out30), "--name", "team/last"]).exit_code == 0
    shown = json.loads(runner.invoke(cli, ["show", "team/last", "--json"]).stdout)
    assert {m["name"]: m["value"] for m in shown["metrics"]} == {
        "eval_accuracy": 0.55,
        "eval_loss": 0.65,
        "loss": 0.7,
    }
    assert shown["evals"][0]["trainer"]["best"]["these_weights"] is False
    assert (
        "    trainer: weights of step 30 of 30; best eval_loss=0.61 at step 20 (other weights);"
        " 3 evaluations logged\n    note: the best eval_loss (0.61) was reached at step 20"
        " (checkpoint-20), not by these weights (step 30)\n"
    ) in runner.invoke(cli, ["show", "team/last"]).stdout


def test_real_trainer_load_best_model_at_end(registry, tmp_path):
    # A real run with load_best_model_at_end: save_model writes the best checkpoint's adapter
    # byte for byte, which is how the push tells which step's values are the weights'.
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, default_data_collator

    base = make_base(tmp_path / "base", vocab_size=VOCAB)
    torch.manual_seed(0)
    model = get_peft_model(
        load_base(base),
        LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj"]),
    )
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, VOCAB, (12,), generator=generator) for _ in range(8)]
    data = [{"input_ids": r, "labels": r} for r in rows]
    out = tmp_path / "out"
    args = TrainingArguments(
        output_dir=str(out), max_steps=6, per_device_train_batch_size=4, learning_rate=5e-2,
        logging_steps=1, save_steps=2, eval_strategy="steps", eval_steps=2, report_to=[],
        use_cpu=True, disable_tqdm=True, seed=0, load_best_model_at_end=True,
        # Trained on its eval rows, the loss falls: "best" as the highest makes step 2 best.
        metric_for_best_model="eval_loss", greater_is_better=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data,
                      data_collator=default_data_collator)  # fmt: skip
    trainer.train()
    trainer.save_model(str(out))
    trainer.save_state()
    state = json.loads((out / "trainer_state.json").read_text())
    assert (state["global_step"], state["best_global_step"]) == (6, 2)

    card = registry.push(out, name="team/best-run").card
    assert card.tags == {"step": "2"}
    assert card.details["trainer"]["weights_step"] == 2
    logged = {m.name: m.value for m in card.metrics}
    assert logged == _logged(out / "checkpoint-2", 2)  # checkpoint-2's own record of step 2
    assert logged["eval_loss"] == state["best_metric"]
    [record] = registry.evals("team/best-run")
    assert record["trainer"]["best"] == {
        "name": "eval_loss",
        "value": state["best_metric"],
        "step": 2,
        "checkpoint": "checkpoint-2",
        "these_weights": True,
    }
    assert [e["step"] for e in record["trainer"]["log_history"]] == [2, 4, 6]
