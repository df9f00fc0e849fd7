"""The parameter ledger: hand-computed counts per method on the tiny Llama, PEFT's own
trainable counts, composites and merge results, and the migration of older cards."""

from __future__ import annotations

import json
import warnings

import pytest
from click.testing import CliRunner

from cli.main import cli
from hub import Registry
from hub.catalog import sqlite_migrations
from hub.inspect import inspect_adapter
from schemas.card import LEDGER
from tests.factories import METHODS, load_base, make_adapter

# The tiny Llama (tests.factories.TINY_LLAMA): hidden 64, 4 heads of 16, 2 KV heads, MLP 128,
# 2 layers, vocabulary 128. Base weights: q_proj 64x64 = 4096, k_proj / v_proj 32x64 = 2048,
# down_proj 64x128 = 8192, lm_head 128x64 = 8192. q_proj + v_proj in 2 layers: 12288.
QV = 2 * (4096 + 2048)
LEDGERS = {
    # method: (trained, stored, stored_frozen, changed_when_merged, extra_at_inference)
    # LoRA r=8: q (8x64 + 64x8) + v (8x64 + 32x8) = 1024 + 768 per layer
    "lora": (3584, 3584, 0, QV, 3584),
    # DoRA r=4: q 256 + 256 + |m|=64, v 256 + 128 + 32 per layer
    "dora": (1984, 1984, 0, QV, 1984),
    # rsLoRA: q r=4 (512), v r=8 (768), down r=8 (8x128 + 64x8 = 1536) per layer, and
    # lm_head saved whole (8192): a merge rewrites q, v, down and replaces lm_head
    "rslora": (13824, 13824, 0, 2 * (4096 + 2048 + 8192) + 8192, 13824),
    # AdaLoRA init_r=6: q (6x64 + 64x6 + 6) + v (6x64 + 32x6 + 6) = 774 + 582 per layer
    "adalora": (2712, 2712, 0, QV, 2712),
    # IA3: k (32), v (32) scale outputs, down (128) scales inputs; a merge scales the whole
    # k, v and down weights: 2 x (2048 + 2048 + 8192)
    "ia3": (384, 384, 0, 2 * (2048 + 2048 + 8192), 384),
    # LoHa r=4: two (out x 4)(4 x 64) pairs: q 2 x 512, v 2 x 384 per layer
    "loha": (3584, 3584, 0, QV, 3584),
    # LoKr r=4: q w1 8x8 + w2 (8x4)(4x8) = 128, v w1 4x8 + w2 (8x4)(4x8) = 96 per layer
    "lokr": (448, 448, 0, QV, 448),
    # OFT blocks of 8 over 64 inputs: 8 blocks x 8*7/2 = 224 per module
    "oft": (896, 896, 0, QV, 896),
    # BOFT: boft_R 1 x 8 x 8 x 8 = 512 and boft_s (out): q 576, v 544 per layer
    "boft": (2240, 2240, 0, QV, 2240),
    # VeRA r=8: lambda_d 8 + lambda_b out: q 72, v 40 per layer; shared vera_A 8x64 and
    # vera_B 64x8 stored frozen, read by every module unmerged (counted once)
    "vera": (224, 224, 1024, QV, 224 + 1024),
    # prompt tuning: 5 virtual tokens x 64
    "prompt_tuning": (320, 320, 0, 0, 320),
    # prefix tuning: 5 tokens x 2 layers x (key, value) x 32 (2 KV heads x 16)
    "prefix_tuning": (640, 640, 0, 0, 640),
    # P-tuning: the MLP encoder trained (5x64 embedding + 64x32+32 + 32x32+32 + 32x64+64);
    # saved and used at inference: the 5x64 prompt it computes
    "p_tuning": (320 + 2080 + 1056 + 2112, 320, 0, 0, 320),
}
PROMPT = ("prompt_tuning", "prefix_tuning", "p_tuning")


def _ledger(card):
    return (
        card.params_trained,
        card.params_stored,
        card.params_stored_frozen,
        card.params_changed_when_merged,
        card.params_extra_at_inference,
    )


def _peft_trainable(base_dir, folder):
    """PEFT's trainable count: the adapter loaded for training; a prompt adapter (PEFT refuses
    to load one as trainable) rebuilt for training from its saved config."""
    from peft import PeftConfig, PeftModel, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = PeftConfig.from_pretrained(folder)
        if config.is_prompt_learning:
            config.inference_mode = False
            model = get_peft_model(load_base(base_dir), config)
        else:
            model = PeftModel.from_pretrained(load_base(base_dir), folder, is_trainable=True)
        return model.get_nb_trainable_parameters()[0]


def test_every_method_has_a_hand_computed_ledger():
    assert sorted(LEDGERS) == sorted(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_ledger_per_method(method, adapters, base_dir):
    folder = adapters(method)
    card = inspect_adapter(folder)
    assert _ledger(card) == LEDGERS[method]
    assert card.params_unknown == {}
    assert card.params_stored_by_dtype == {"f32": card.params_stored}
    assert card.params_trainable == card.params_stored  # the old name, for scripts
    base = sum(p.numel() for p in load_base(base_dir).parameters())
    assert card.params_base == base
    for name in LEDGER:
        assert getattr(card, f"{name}_fraction") == pytest.approx(getattr(card, name) / base)
    assert card.params_fraction == card.params_stored_fraction
    assert card.params_trained == _peft_trainable(base_dir, folder)
    if method == "p_tuning":
        assert "PEFT saves only the prompt it computes" in card.params_notes["params_trained"]


@pytest.mark.parametrize(
    ("method", "overrides", "trained"),
    [
        # LSTM encoder, 2 layers, hidden 32, both directions: per direction 4 gates of
        # 32 x (in + 32) + 2 x 4 x 32 biases, in = 64 then 64; head 64x64+64 and 64x64+64
        ("p_tuning", {"encoder_reparameterization_type": "LSTM"}, 58816),
        # prefix projection: 5x32 embedding + 32x16+16 + 16x128+128 (2 layers x 2 x 32)
        ("prefix_tuning", {"prefix_projection": True, "encoder_hidden_size": 16}, 2864),
    ],
)
def test_prompt_encoders_trained_but_not_saved(method, overrides, trained, base_dir, tmp_path):
    folder = make_adapter(method, tmp_path / method, base_dir, **overrides)
    card = inspect_adapter(folder)
    assert card.params_trained == trained == _peft_trainable(base_dir, folder)
    stored = 320 if method == "p_tuning" else 640
    assert (card.params_stored, card.params_extra_at_inference) == (stored, stored)
    assert "params_stored" in card.params_notes["params_trained"]


def test_counts_that_need_the_base_shapes_are_unknown_without_it(adapters):
    ia3 = inspect_adapter(adapters("ia3"), base_dirs=())
    assert ia3.params_changed_when_merged is None
    assert ia3.params_changed_when_merged_fraction is None
    assert ia3.params_unknown == {
        "params_changed_when_merged": "the shape of the base weight of"
        " 'model.layers.0.mlp.down_proj' is not in the adapter's files: it needs the base's"
        " weight shapes (push with the base model's folder readable, see `hub push`)"
    }
    assert (ia3.params_trained, ia3.params_extra_at_inference) == (384, 384)
    assert inspect_adapter(adapters("oft"), base_dirs=()).params_changed_when_merged is None
    assert inspect_adapter(adapters("vera"), base_dirs=()).params_changed_when_merged is None
    # LoRA's factors, BOFT's rotations and scales give both sides of the weight
    assert inspect_adapter(adapters("lora"), base_dirs=()).params_changed_when_merged == QV
    assert inspect_adapter(adapters("boft"), base_dirs=()).params_changed_when_merged == QV


def test_vera_without_saved_projections(base_dir, tmp_path):
    folder = make_adapter("vera", tmp_path / "vera", base_dir, save_projection=False)
    card = inspect_adapter(folder)
    # regenerated from the PRNG key: vera_A 8 x 64 (widest input), vera_B 64 x 8
    assert _ledger(card) == (224, 224, 0, QV, 224 + 1024)
    assert card.params_trained == _peft_trainable(base_dir, folder)
    unknown = inspect_adapter(folder, base_dirs=())
    assert unknown.params_extra_at_inference is None
    assert "VeRA's regenerated projections" in unknown.params_unknown["params_extra_at_inference"]


def test_adalora_trained_init_r_but_stores_what_pruning_kept(base_dir, tmp_path):
    from tests.factories import make_pruned_adalora

    folder = make_pruned_adalora(tmp_path / "pruned", base_dir)
    config = json.loads((folder / "adapter_config.json").read_text())
    card = inspect_adapter(folder)
    kept = {k.removesuffix(".lora_E"): sum(m) for k, m in config["rank_pattern"].items()}
    widths = {"q_proj": 64 + 64, "v_proj": 64 + 32}  # in + out
    trained = sum(6 * (widths[m.rsplit(".", 1)[-1]] + 1) for m in kept)  # init_r = 6
    stored = sum(r * (widths[m.rsplit(".", 1)[-1]] + 1) for m, r in kept.items())
    assert (card.params_trained, card.params_stored) == (trained, stored)
    assert trained > stored
    assert card.params_stored == _peft_trainable(base_dir, folder)  # PEFT counts the file
    assert card.params_notes["params_trained"].startswith("AdaLoRA trained init_r=6 triplets")


def test_lora_fa_declared_by_tag(registry, adapters, base_dir):
    card = registry.push(adapters("lora"), name="t/fa", tags=["optimizer=lorafa"]).card
    assert card.params_trained == 3584 - 4 * 8 * 64  # lora_A of q and v in 2 layers: frozen
    assert card.params_stored == 3584
    assert "LoRA-FA (tag optimizer=lorafa)" in card.params_notes["params_trained"]
    assert registry.push(adapters("lora"), name="t/plain").card.params_trained == 3584


def test_composites_ledger(registry, adapters, base_dir, tmp_path):
    for name in ("lora", "dora", "ia3"):
        registry.push(adapters(name), name=f"t/{name}")
    for i in range(3):
        registry.push(
            make_adapter("prompt_tuning", tmp_path / f"p{i}", base_dir, seed=40 + i), name=f"t/p{i}"
        )
    stack = registry.compose(
        {"operator": "stack", "name": "t/stack", "inputs": ["t/lora", "t/ia3", "t/dora"]}
    ).card
    assert stack.params_trained == stack.params_stored == 3584 + 384 + 1984
    assert stack.params_extra_at_inference == 3584 + 384 + 1984
    # LoRA and DoRA on q, v; IA3 on k, v, down: the merge rewrites q, k, v and down once each
    assert stack.params_changed_when_merged == 2 * (4096 + 2048 + 2048 + 8192)
    ensemble = registry.compose(
        {"operator": "ensemble", "name": "t/ens", "inputs": ["t/p0", "t/p1", "t/p2"]}
    ).card
    assert (ensemble.params_trained, ensemble.params_extra_at_inference) == (960, 960)
    assert ensemble.params_changed_when_merged is None
    assert ensemble.params_unknown["params_changed_when_merged"] == (
        "an ensemble is never merged into the base"
    )
    registry.push(make_adapter("lora", tmp_path / "lora2", base_dir, seed=7), name="t/lora2")
    merged = registry.compose(
        {"operator": "cat", "name": "t/cat", "inputs": ["t/lora", "t/lora2"]}
    ).card
    assert merged.params_stored == 2 * 3584  # rank 16: the exact concatenation
    assert merged.params_trained == 2 * 3584  # its inputs' training
    assert merged.params_changed_when_merged == QV
    assert merged.params_notes["params_trained"].startswith("a cat merge of 2 adapters")


_LEDGER_MIGRATION = sqlite_migrations.MIGRATIONS.index(sqlite_migrations._migration_6) + 1


def _strip_ledger(home):
    """Make the index one that the code before the ledger wrote: every stored card without
    the ledger's keys, and the schema as it stood before the ledger's migration (the records
    of that migration and of later ones gone, the tables of later ones dropped)."""
    import sqlite3

    from hub.reledger import LEDGER_KEYS

    conn = sqlite3.connect(home / "index.db")
    conn.execute("DELETE FROM schema_migrations WHERE version >= ?", (_LEDGER_MIGRATION,))
    conn.execute("DROP TABLE IF EXISTS lineage")  # migration 7, after the ledger
    conn.execute("DROP TABLE IF EXISTS settings")  # migration 8
    for version_id, text in conn.execute("SELECT id, card FROM versions").fetchall():
        card = json.loads(text)
        old = {k: v for k, v in card.items() if k not in LEDGER_KEYS}
        old["params_trainable"] = old.pop("params_stored", old.get("params_trainable"))
        conn.execute("UPDATE versions SET card = ? WHERE id = ?", (json.dumps(old), version_id))
    conn.commit()
    conn.close()


def test_migration_recomputes_the_ledger_of_older_versions(hub_home, adapters, monkeypatch):
    all_migrations = list(sqlite_migrations.MIGRATIONS)
    with Registry(hub_home) as old:
        for method in ("lora", "ia3", "vera", "p_tuning"):
            old.push(adapters(method), name=f"t/{method}")
        old.compose({"operator": "stack", "name": "t/stack", "inputs": ["t/lora", "t/p_tuning"]})
        old.compose({"operator": "cat", "name": "t/cat", "inputs": ["t/lora", "t/lora"]})
    _strip_ledger(hub_home)
    monkeypatch.setattr(sqlite_migrations, "MIGRATIONS", all_migrations[: _LEDGER_MIGRATION - 1])
    with Registry(hub_home) as old:
        before = old.show("t/lora")
        assert (before.params_trained, before.params_stored) == (None, 3584)
        stored = json.loads(old.catalog.conn.execute("SELECT card FROM versions").fetchone()[0])
        assert "params_trained" not in stored and stored["params_trainable"] == 3584
    monkeypatch.setattr(sqlite_migrations, "MIGRATIONS", all_migrations)
    with Registry(hub_home) as new:
        assert new.catalog.schema_version() == len(all_migrations)
        assert _ledger(new.show("t/lora")) == LEDGERS["lora"]
        assert _ledger(new.show("t/p_tuning")) == LEDGERS["p_tuning"]
        for method in ("ia3", "vera"):  # one side of the weights: the base's shapes tell
            card = new.show(f"t/{method}")
            assert _ledger(card)[:3] == LEDGERS[method][:3]
            assert card.params_extra_at_inference == LEDGERS[method][4]
            assert card.params_changed_when_merged is None  # the migration reads no base
            assert "base's weight shapes" in card.params_unknown["params_changed_when_merged"]
            assert card.params_base == before.params_base  # kept from the stored card
        stack = new.show("t/stack")
        assert stack.params_trained == 3584 + 5568
        assert stack.params_changed_when_merged == QV  # the prompt rewrites nothing
        cat = new.show("t/cat")
        assert cat.params_trained == 2 * 3584
    result = CliRunner().invoke(cli, ["--home", str(hub_home), "show", "t/lora", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert [shown[k] for k in LEDGER] == list(LEDGERS["lora"][:2] + LEDGERS["lora"][3:])
    assert shown["params_trainable"] == shown["params_stored"]
    assert shown["params_trained_fraction"] == pytest.approx(3584 / shown["params_base"])


def test_show_json_and_text_show_the_ledger(registry, adapters, hub_home):
    registry.push(adapters("p_tuning"), name="t/pt")
    runner = CliRunner()
    shown = json.loads(runner.invoke(cli, ["show", "t/pt", "--json"]).output)
    assert {k: shown[k] for k in LEDGER} == {
        "params_trained": 5568,
        "params_stored": 320,
        "params_changed_when_merged": 0,
        "params_extra_at_inference": 320,
    }
    assert shown["params_stored_by_dtype"] == {"f32": 320}
    text = runner.invoke(cli, ["show", "t/pt"]).output
    assert "trained params" in text and "5.6K" in text


def test_readme_ledger_table_is_rendered_from_the_rules():
    import re
    from pathlib import Path

    from hub.inspect.ledger_rules import RULES, ledger_table

    text = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- ledger-table[^>]*-->\n(.*?)<!-- /ledger-table -->", text, re.S)
    assert match is not None, "README.md lost its ledger-table markers"
    assert match.group(1) == ledger_table()
    covered = {m for rule in RULES for m in rule.methods}
    assert set(LEDGERS) <= covered  # every method checked above has its counting rule
    assert {"generic", "stack", "ensemble", "merge"} <= covered


@pytest.mark.parametrize(
    ("overrides", "ledger"),
    [
        # lora_B biases: + out per module (64 for q, 32 for v, 2 layers), rewritten by a merge
        ({"lora_bias": True}, (3584 + 192, 3584 + 192, 0, QV + 192, 3584 + 192)),
        # 3 embedding rows trained beside the LoRA: 3 x 64, rewritten rows, read unmerged
        ({"trainable_token_indices": [1, 2, 3]}, (3584 + 192, 3584 + 192, 0, QV + 192, 3776)),
        # LoRA on the embedding too: A 8 x 128 (vocabulary), B 64 x 8; rewrites 128 x 64.
        # PEFT saves the base's embedding beside it (a frozen copy, 128 x 64): stored apart
        (
            {"target_modules": ["q_proj", "v_proj", "embed_tokens"]},
            (3584 + 1536, 3584 + 1536, 8192, QV + 8192, 3584 + 1536),
        ),
    ],
)
def test_lora_extras_in_the_ledger(overrides, ledger, base_dir, tmp_path):
    folder = make_adapter("lora", tmp_path / "lora", base_dir, **overrides)
    card = inspect_adapter(folder)
    assert _ledger(card) == ledger
    assert card.params_trained == _peft_trainable(base_dir, folder)


def test_migration_keeps_what_it_cannot_recompute(hub_home, adapters, monkeypatch):
    all_migrations = list(sqlite_migrations.MIGRATIONS)
    with Registry(hub_home) as old:
        card = old.push(adapters("lora"), name="t/lost").card
    _strip_ledger(hub_home)
    weights = next(f for f in card.files if f.path == "adapter_model.safetensors")
    blob = next(p for p in (hub_home / "store").rglob(weights.sha256) if p.is_file())
    blob.unlink()  # the file is gone from the store: `hub verify` would say so
    monkeypatch.setattr(sqlite_migrations, "MIGRATIONS", all_migrations)
    with Registry(hub_home) as new:
        lost = new.show("t/lost")
    assert (lost.params_stored, lost.params_trained, lost.params_changed_when_merged) == (
        3584,
        None,
        None,
    )
    assert lost.params_unknown["params_trained"] == (
        f"not recomputed from the stored files: blob {weights.sha256[:12]} is missing from the"
        " store (run `hub verify`)"
    )
    assert "params_stored" not in lost.params_unknown


def test_pushing_the_same_files_again_refreshes_the_ledger(registry, adapters):
    first = registry.push(adapters("ia3"), name="t/ia3", base_dirs=()).card
    assert first.params_changed_when_merged is None  # the base folder was not readable
    again = registry.push(adapters("ia3"), name="t/ia3", tags=["optimizer=adamw"])
    assert not again.created
    assert again.card.params_changed_when_merged == LEDGERS["ia3"][3]
    assert again.card.params_unknown == {}
    lora = registry.push(adapters("lora"), name="t/lora").card
    assert lora.params_trained == 3584
    declared = registry.push(adapters("lora"), name="t/lora", tags=["optimizer=lorafa"]).card
    assert (declared.version, declared.params_trained) == (lora.version, 3584 - 4 * 8 * 64)


def test_cartridge_frozen_rows_are_not_trained(base_dir, tmp_path, monkeypatch):
    import tests.peft_types as peft_types

    monkeypatch.setitem(
        peft_types.GENERIC_TYPES, "cartridge", {"num_virtual_tokens": 4, "num_frozen_tokens": 1}
    )
    folder = peft_types.make_typed_adapter("cartridge", tmp_path / "cartridge", base_dir)
    card = inspect_adapter(folder)
    # a KV prefix of 4 tokens x 2 layers x (key, value) x 32: 512 stored, the first row frozen
    assert (card.params_stored, card.params_trained) == (512, 512 - 128)
    assert card.params_trained == _peft_trainable(base_dir, folder)
    assert (card.params_changed_when_merged, card.params_extra_at_inference) == (0, 512)
    assert card.params_notes["params_trained"] == (
        "the first num_frozen_tokens=1 rows of prompt_embeddings are frozen"
    )


def test_lora_variants_mica_and_alora(base_dir, tmp_path):
    mica = make_adapter("lora", tmp_path / "mica", base_dir, init_lora_weights="mica")
    card = inspect_adapter(mica)
    # lora_A trained (8 x 64 for q and v, 2 layers); lora_B (64 x 8, 32 x 8) stored frozen
    assert _ledger(card) == (2048, 2048, 1536, QV, 3584)
    assert card.params_trained == _peft_trainable(base_dir, mica)
    alora = make_adapter("lora", tmp_path / "alora", base_dir, alora_invocation_tokens=[5, 9])
    card = inspect_adapter(alora)
    assert _ledger(card) == (3584, 3584, 0, None, 3584)
    assert card.params_unknown == {
        "params_changed_when_merged": "lora (alora) cannot be merged into the base weights"
        " (it runs unmerged only)"
    }
    assert card.params_trained == _peft_trainable(base_dir, alora)


def test_lora_trained_biases(tmp_path):
    from tests.factories import make_base

    base = make_base(tmp_path / "biased", attention_bias=True)
    folder = make_adapter("lora", tmp_path / "lora", base, bias="all")
    card = inspect_adapter(folder)
    # every bias is trained: q 64, k 32, v 32, o 64 per layer; a merge keeps them (they
    # overwrite the base's when loaded, so they add nothing to the unmerged forward)
    assert _ledger(card) == (3584 + 384, 3584 + 384, 0, QV + 384, 3584)
    assert card.params_trained == _peft_trainable(base, folder)
