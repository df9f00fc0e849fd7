"""The README's method table (``schemas.methods.ROWS``, rendered by ``compose.support``) states
what the code does: every row's claims are driven through the real paths on a tiny model.

Each row has a specimen: a real adapter saved by PEFT (a case of the fidelity harness,
``test_fidelity.CASES``, or a builder here for the types the harness cannot run). The
specimen is pushed and pulled, then exported in every format and composed with every
operator through the Registry API; each attempt either works or is refused with one typed
``Error:`` line, and what happened must be exactly what the row says (``claimed``). The
numbers themselves (logits vs PEFT) are the fidelity harness's job; this test pins the table.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from compose.support import operators_for
from schemas.methods import ROWS, Row, method_row
from tests.compose.deploy.models import make_base
from tests.e2e.fidelity import (
    EXPORT_TOL,
    TINY,
    Bases,
    Case,
    build_adapter,
    error_line,
    hf_logits,
    peft_logits,
)
from tests.e2e.test_fidelity import CASES, _generic_config

SPECIMENS: dict[str, tuple[str, ...]] = {
    "lora": ("lora-llama",),
    "lora + rslora": ("rslora-llama",),
    "lora + dora": ("dora-llama", "dora-embeddings-llama-tied"),
    "lora + modules_to_save": ("modules-to-save-llama", "ensure-weight-tying-modules-to-save"),
    "lora + rank_pattern / alpha_pattern": ("patterns-llama",),
    "lora + mica": ("mica",),
    "lora + alora": ("alora",),
    "lora + PiSSA / OLoRA init, unconverted": ("pissa-unconverted", "olora-unconverted"),
    "lora + PiSSA / OLoRA init, converted": ("pissa-converted",),
    "lora + embed_tokens / lm_head": (
        "lora-embeddings-llama",
        "lora-embeddings-llama-tied",
        "ensure-weight-tying-lm-head",
    ),
    "lora + trainable_token_indices": (
        "trainable-tokens-llama",
        "trainable-tokens-llama-tied",
        "trainable-tokens-lm-head",
    ),
    "lora + MoE experts (target_parameters)": ("moe-experts-mixtral",),
    "lora + MoE router (gate)": ("moe-router-mixtral",),
    "lora + bias='all' / 'lora_only'": ("bias-all-qwen2", "bias-lora-only-qwen2"),
    "lora + lora_bias": ("lora-bias-qwen2",),
    "lora + bdlora": ("bdlora-llama",),
    "lora + kasa": ("kasa-llama",),
    "lora + velora": ("velora-llama",),
    "lora + monteclora": ("monteclora-llama",),
    "lora + layer_replication": ("layer-replication",),
    "adalora": ("adalora-pruned",),
    "ia3": ("ia3-llama",),
    "loha": ("loha-llama",),
    "lokr": ("lokr-llama",),
    "oft": ("oft",),
    "boft": ("boft",),
    "vera": ("vera-llama",),
    "prompt_tuning": ("prompt-tuning",),
    "prefix_tuning": ("prefix-tuning",),
    "p_tuning": ("p-tuning",),
    "beft": ("beft-qwen2",),  # PEFT merges BEFT only into layers with a bias
}
"""Row label -> the ids of its specimens (cases of ``test_fidelity.CASES`` or ``EXTRA``).
A generic type's row defaults to the harness case named after it."""


def _task_case(peft_type: str) -> Case:
    from tests.e2e.fidelity import Card
    from tests.peft_types import GENERIC_TYPES

    return Case(
        peft_type.replace("_", "-"),
        "llama",
        _generic_config(peft_type, GENERIC_TYPES[peft_type]),
        Card(peft_type),
    )


def _build_xlora(base: Path, out: Path) -> Path:
    """X-LoRA over two LoRAs of the harness (its config names their folders)."""
    import torch
    from peft import XLoraConfig, get_peft_model

    from tests.e2e.fidelity import load_base

    loras = {
        str(i): str(build_adapter(_BY_ID["lora-llama"], base, out.parent / f"lora{i}")[0])
        for i in range(2)
    }
    torch.manual_seed(1)
    model = load_base(base)
    model.name_or_path = model.config._name_or_path = str(base)
    model.config.use_cache = False  # X-LoRA refuses a model with the KV cache on
    hidden = model.config.hidden_size
    config = XLoraConfig(
        task_type="CAUSAL_LM", hidden_size=hidden, xlora_depth=1, xlora_size=8, adapters=loras
    )
    get_peft_model(model, config).save_pretrained(out)
    return out


Build = Callable[[Path, Path], Path]
EXTRA: dict[str, Case | Build] = {
    **{case.id: case for case in map(_task_case, ("poly", "multitask_prompt_tuning"))},
    "xlora": _build_xlora,
}
"""Specimens the harness cannot run: a forward pass that needs task ids (built like the
harness's cases), X-LoRA (LoRAs in subfolders; a builder of (base, out) -> folder)."""

_BY_ID = {case.id: case for case in CASES}


def specimens(row: Row) -> tuple[str, ...]:
    if row.label in SPECIMENS:
        return SPECIMENS[row.label]
    return (row.method.replace("_", "-"),)


# -- bases: the harness's tiny families, with a tokenizer (GGUF embeds it) -----------------
_TOKENIZED = {**TINY, "vocab": 300, "tokenizer": "bpe"}
FAMILIES: dict[str, Callable[[Path], Path]] = {
    "llama": lambda p: make_base(p, "llama", seed=10, **_TOKENIZED),
    "llama-tied": lambda p: make_base(p, "llama", tied=True, seed=11, **_TOKENIZED),
    "qwen2": lambda p: make_base(p, "qwen2", seed=12, **_TOKENIZED),
    "mixtral": lambda p: make_base(
        p, "mixtral", seed=13, num_local_experts=4, num_experts_per_tok=2, **_TOKENIZED
    ),
}

FORMATS = ("safetensors", "gguf", "fp8", "gguf-lora", "vllm-bundle")
_PARAMS = {"svd": {"rank": 4}, "ties": {"density": 0.5}, "dare": {"density": 0.5, "seed": 1}}
_PARAMS["magnitude-prune"] = {"density": 0.5}


@dataclass
class Outcome:
    """What the code did with one specimen, in the table's terms."""

    card: str
    merge: str
    """``streamed`` / ``peft`` (PEFT's merge_and_unload, said in the result) / ``none``."""
    formats: dict[str, bool]
    compose: tuple[str, ...]
    refusals: dict[str, str]
    """Step -> the one-line error it was refused with (for the assertion message)."""


def claimed(row: Row) -> dict[str, Any]:
    """What the table says about ``row``, in ``observe``'s terms."""
    return {
        "card": row.card,
        "merge": row.merge,
        "formats": {
            "safetensors": row.merge != "none",
            "gguf": row.merged_formats,
            "fp8": row.merged_formats,
            "gguf-lora": row.gguf_lora,
            "vllm-bundle": row.vllm_bundle,
        },
        "compose": operators_for(row),
    }


def observe(folder: Path, base: Path, registry: Any, tmp: Path, slug: str) -> Outcome:
    """Push, pull, export in every format and compose with every operator: what happened."""
    from compose.deploy.peft_merge import MEMORY_NOTE
    from compose.operators import OPERATORS
    from schemas.errors import HubError

    refusals: dict[str, str] = {}

    def attempt(step: str, run: Callable[[], Any]) -> Any:
        try:
            return run()
        except HubError as error:
            line = error_line(error)
            assert "\n" not in line, line
            refusals[step] = line
            return None

    card = registry.push(folder, name=f"support/{slug}").card  # push must work for every row
    pulled = registry.pull(card.ref, tmp / "pulled")
    for entry in card.files:
        assert (pulled / entry.path).read_bytes() == (folder / entry.path).read_bytes()

    formats: dict[str, bool] = {}
    merge = "none"
    for fmt in FORMATS:
        out = tmp / f"export-{fmt}"
        result = attempt(
            fmt,
            lambda fmt=fmt, out=out: registry.export(
                card.ref, base=base, output=out, format=fmt, progress=False
            ),
        )
        formats[fmt] = result is not None
        if result is None:
            assert not out.exists(), f"refused {fmt} export left {out}"
        elif fmt == "safetensors":
            merge = "peft" if result.details.get("merge") == MEMORY_NOTE else "streamed"
    accepted = []
    for operator in OPERATORS:
        recipe = {
            "operator": operator,
            "name": f"support/{slug}-{operator}",
            # A stack takes the adapter alone (a prompt adapter may only come last).
            "inputs": [card.ref] if operator == "stack" else [card.ref, card.ref],
            **_PARAMS.get(operator, {}),
        }
        if attempt(f"compose {operator}", lambda recipe=recipe: registry.compose(recipe)):
            accepted.append(operator)
    kind = "generic" if str(card.details.get("card", "")).startswith("generic") else "specific"
    return Outcome(kind, merge, formats, tuple(accepted), refusals)


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> Bases:
    return Bases(tmp_path_factory.mktemp("support-bases"), FAMILIES)


def _case(case_id: str) -> Case | Build:
    return _BY_ID.get(case_id) or EXTRA[case_id]


def test_every_row_has_a_specimen():
    for row in ROWS:
        for case_id in specimens(row):
            assert case_id in _BY_ID or case_id in EXTRA, (row.label, case_id)


def _row_param(row: Row) -> Any:
    needs = {c.needs for c in map(_case, specimens(row)) if isinstance(c, Case) and c.needs}
    missing = sorted(m for m in needs if importlib.util.find_spec(m) is None)
    reason = f"its specimen needs {', '.join(missing)}, which the project does not depend on"
    return pytest.param(
        row, id=row.label.replace(" ", ""), marks=pytest.mark.skipif(bool(missing), reason=reason)
    )


@pytest.mark.parametrize("row", [_row_param(r) for r in ROWS])
def test_row_states_what_the_code_does(row: Row, registry, bases, tmp_path) -> None:
    for case_id in specimens(row):
        case = _case(case_id)
        work = tmp_path / case_id
        if isinstance(case, Case):
            base = bases(case.base)
            folder, _ = build_adapter(case, base, work / "adapter")
        else:
            base = bases("llama")
            folder = case(base, work / "adapter")
        outcome = observe(folder, base, registry, work, case_id)
        got = {k: v for k, v in vars(outcome).items() if k != "refusals"}
        assert got == claimed(row), (case_id, outcome.refusals)
        card = registry.show(f"support/{case_id}")
        if card.variant is not None:  # a card variant's row is the one its card names
            assert method_row(card.method, card.variant) is row, (case_id, card.variant)
        if row.method == "lora" and "linear" in outcome.compose:
            # Accepted is not enough: `linear` of the adapter alone is the adapter itself,
            # so its merged export must give PEFT's logits (what an operator would drop or
            # misplace shows here).
            _check_identity(registry, card.ref, case_id, base, folder, work)


def _check_identity(registry: Any, ref: str, slug: str, base: Path, folder: Path, tmp: Path):
    import torch

    recipe = {"operator": "linear", "name": f"support/{slug}-alone", "inputs": [ref]}
    composite = registry.compose({**recipe, "weights": [1.0]}).card
    out = tmp / "alone"
    registry.export(composite.ref, base=base, output=out, dtype="fp32", progress=False)
    torch.testing.assert_close(hf_logits(out), peft_logits(base, folder), rtol=0, atol=EXPORT_TOL)


_STACK_OR_EXPORT = "(use `hub compose stack`, or export it merged)"
COMPOSE_REFUSALS = {
    "trainable-tokens-llama": "retrains token rows (trainable_token_indices=[3, 5, 7, 42])"
    f" beside its LoRA; `linear` cannot merge it {_STACK_OR_EXPORT}",
    "kasa-llama": "is a KaSA LoRA (kasa_config): its lora_diag scales the rank components;"
    f" `linear` cannot merge it {_STACK_OR_EXPORT}",
    "bdlora-llama": "is a block-diagonal LoRA (use_bdlora): its factors are stored per block;"
    f" `linear` cannot merge it {_STACK_OR_EXPORT}",
    "moe-experts-mixtral": "adapts MoE expert parameters (target_parameters="
    "['experts.down_proj', 'experts.gate_up_proj']): its factors hold one delta per expert;"
    f" `linear` cannot merge it {_STACK_OR_EXPORT}",
    "layer-replication": "uses layer_replication [[0, 2], [1, 2]]: PEFT builds more layers than"
    " the base has, each copy with its own LoRA; `linear` cannot merge it (serve it unmerged"
    " with PEFT)",
}
"""LoRAs whose tensors are not ``B @ A`` per module: the merge operators used to accept them
and write a composite that dropped (token rows, KaSA's diagonal) or misplaced (BD-LoRA's
blocks, per-expert factors, replicated layers) part of the adapter."""


@pytest.mark.parametrize("case_id", sorted(COMPOSE_REFUSALS))
def test_merge_operators_refuse_what_they_would_merge_wrongly(case_id, registry, bases, tmp_path):
    from schemas.errors import IncompatibleAdapters

    case = _BY_ID[case_id]
    folder, _ = build_adapter(case, bases(case.base), tmp_path / "adapter")
    ref = registry.push(folder, name=f"support/{case_id}").card.ref
    recipe = {"operator": "linear", "name": "support/composite", "inputs": [ref, ref]}
    with pytest.raises(IncompatibleAdapters) as refused:
        registry.compose(recipe)
    assert str(refused.value) == f"{ref} {COMPOSE_REFUSALS[case_id]}"
    assert [c.repo for c in registry.search()] == [f"support/{case_id}"]  # nothing composed
