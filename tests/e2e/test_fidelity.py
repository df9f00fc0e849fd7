"""Fidelity: for every PEFT method and variant, on tiny Llama, tied Llama, Qwen2 (attention
biases) and Mixtral (MoE) bases: save with PEFT, push, card against PEFT, pull + load, export
vs the fp32 PeftModel, or the expected one-line refusal. See ``tests/e2e/fidelity.py``.

To add a case, append a ``Case`` to ``CASES`` (one row per base where the base matters).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.fidelity import MERGED, Bases, Card, Case, Merged, Refused, perturb, run_case

FAMILIES = ("llama", "llama-tied", "qwen2", "mixtral")
ATTENTION = ["q_proj", "v_proj"]
NOT_MERGEABLE = "cannot be merged into weights"
PEFT_ONLY = "is merged by PEFT's merge_and_unload, which only gives merged weights"


def peft(class_name: str, **kwargs: Any) -> Callable[[], Any]:
    """A factory of ``peft.<class_name>(task_type="CAUSAL_LM", **kwargs)``."""

    def build() -> Any:
        import peft as peft_module

        return getattr(peft_module, class_name)(task_type="CAUSAL_LM", **kwargs)

    return build


def _ia3(family: str) -> Callable[[], Any]:
    # Mixtral's MLP is experts (no plain down_proj): its feed-forward IA3 is on o_proj.
    ff = "o_proj" if family == "mixtral" else "down_proj"
    return peft("IA3Config", target_modules=["k_proj", "v_proj", ff], feedforward_modules=[ff])


def _per_base(family: str) -> list[Case]:
    """The plain methods that must be right on every base family."""
    return [
        Case(
            f"lora-{family}",
            family,
            peft("LoraConfig", r=8, lora_alpha=16, target_modules=ATTENTION),
            Card("lora", rank=8),
        ),
        Case(
            f"rslora-{family}",
            family,
            peft("LoraConfig", r=8, lora_alpha=16, use_rslora=True, target_modules=ATTENTION),
            Card("lora", "rslora", 8),
        ),
        Case(
            f"dora-{family}",
            family,
            peft("LoraConfig", r=4, lora_alpha=8, use_dora=True, target_modules=ATTENTION),
            Card("lora", "dora", 4),
        ),
        Case(
            f"patterns-{family}",
            family,
            peft(
                "LoraConfig",
                r=8,
                lora_alpha=16,
                rank_pattern={"q_proj": 4},
                alpha_pattern={"v_proj": 32},
                target_modules=[*ATTENTION, "o_proj"],
            ),
            Card(
                "lora",
                rank=8,
                details={"rank_pattern": {"q_proj": 4}, "alpha_pattern": {"v_proj": 32}},
            ),
        ),
        Case(
            f"modules-to-save-{family}",
            family,
            peft(
                "LoraConfig",
                r=4,
                lora_alpha=8,
                target_modules=ATTENTION,
                modules_to_save=["lm_head"],
            ),
            Card("lora", rank=4, details={"modules_to_save": ["lm_head"]}),
        ),
        Case(f"ia3-{family}", family, _ia3(family), Card("ia3")),
        Case(
            f"loha-{family}",
            family,
            peft("LoHaConfig", r=4, alpha=8, target_modules=ATTENTION),
            Card("loha", rank=4),
        ),
        Case(
            f"lokr-{family}",
            family,
            peft("LoKrConfig", r=4, alpha=8, target_modules=ATTENTION),
            Card("lokr", rank=4),
        ),
        Case(
            f"vera-{family}",
            family,
            peft("VeraConfig", r=8, target_modules=ATTENTION),
            Card("vera", rank=8),
        ),
    ]


CASES: list[Case] = [
    *(case for family in FAMILIES for case in _per_base(family)),
    Case(
        "adalora-unpruned",
        "llama",
        peft("AdaLoraConfig", init_r=6, target_r=2, total_step=10, target_modules=ATTENTION),
        Card("adalora", rank=6, details={"init_r": 6, "target_r": 2}),
    ),
    Case(
        "oft",
        "llama",
        peft("OFTConfig", r=0, oft_block_size=8, target_modules=ATTENTION),
        Card("oft", rank=4, details={"oft_block_size": 8}),
        export={"safetensors": MERGED, "gguf": Refused(PEFT_ONLY)},
    ),
    Case(
        "boft",
        "llama",
        peft("BOFTConfig", boft_block_size=8, target_modules=ATTENTION),
        Card("boft", details={"boft_block_size": 8}),
        export={"safetensors": MERGED, "gguf": Refused(PEFT_ONLY)},
    ),
    Case(
        "prompt-tuning",
        "llama",
        peft("PromptTuningConfig", num_virtual_tokens=5),
        Card("prompt_tuning", rank=5),
        export={"safetensors": Refused("method prompt_tuning " + NOT_MERGEABLE)},
    ),
    Case(
        "prefix-tuning",
        "llama",
        peft("PrefixTuningConfig", num_virtual_tokens=5),
        Card("prefix_tuning", rank=5),
        export={"safetensors": Refused("method prefix_tuning " + NOT_MERGEABLE)},
    ),
    Case(
        "p-tuning",
        "llama",
        peft("PromptEncoderConfig", num_virtual_tokens=5, encoder_hidden_size=16),
        Card("p_tuning", rank=5, params_note="prompt encoder"),
        export={"safetensors": Refused("method p_tuning " + NOT_MERGEABLE)},
    ),
]

# -- exports that were silently wrong (issue 9): each merges right now, or is refused --------
ADAPTERS_ONLY = ("gguf-lora", "vllm-bundle")  # formats that ship the adapter beside the base


def _prune_adalora(model: Any, generator: Any) -> None:
    """Train-like noise, then AdaLoRA's own final masking step with a fixed budget: q_proj keeps
    3 of its 6 triplets, v_proj 2 (what ``update_and_allocate`` does at ``tfinal``, with the
    triplets it kept made explicit so the expected ranks are known)."""
    perturb(model, generator)
    keep = {
        "q_proj": [True, False, True, False, False, True],
        "v_proj": [False, True, False, False, True, False],
    }
    inner = model.base_model.model  # AdaLoRA's allocator works on the wrapped model's names
    pattern = {
        name: keep[name.split(".")[-3]]
        for name, _ in inner.named_parameters()
        if ".lora_E." in name
    }
    model.peft_config["default"].rank_pattern = pattern
    model.base_model.rankallocator.mask_using_rank_pattern(inner, pattern)


# PiSSA's conversion reads the initial adapter from a path fixed in the row's save options.
_PISSA_INITIAL = Path(tempfile.mkdtemp(prefix="fidelity-pissa-")) / "initial"
atexit.register(shutil.rmtree, _PISSA_INITIAL.parent, ignore_errors=True)


def _pissa_save_initial(model: Any, generator: Any) -> None:
    """PEFT's PiSSA guide: save the initial adapter (as plain LoRA init), then train."""
    model.peft_config["default"].init_lora_weights = True
    model.save_pretrained(_PISSA_INITIAL)
    model.peft_config["default"].init_lora_weights = "pissa"
    perturb(model, generator)


def _refused_everywhere(text: str) -> dict[str, Refused]:
    return {fmt: Refused(text) for fmt in ("safetensors", *ADAPTERS_ONLY)}


CASES.extend(
    [
        Case(
            "adalora-pruned",
            "llama",
            peft(
                "AdaLoraConfig",
                init_r=6,
                target_r=2,
                tinit=1,
                tfinal=2,
                total_step=6,
                target_modules=ATTENTION,
            ),
            Card(
                "adalora",
                rank=3,
                details={
                    "init_r": 6,
                    "module_ranks": {
                        f"model.layers.{i}.self_attn.{m}": k
                        for i in range(2)
                        for m, k in (("q_proj", 3), ("v_proj", 2))
                    },
                },
            ),
            prepare=_prune_adalora,
        ),
        *(
            Case(
                f"{init}-unconverted",
                "llama",
                peft(
                    "LoraConfig",
                    r=4,
                    lora_alpha=8,
                    init_lora_weights=init,
                    target_modules=ATTENTION,
                ),
                Card("lora", rank=4, details={"init_lora_weights": init}),
                export=_refused_everywhere(f"init_lora_weights={init!r}"),
            )
            for init in ("pissa", "olora")
        ),
        Case(
            "pissa-converted",
            "llama",
            peft(
                "LoraConfig", r=4, lora_alpha=8, init_lora_weights="pissa", target_modules=ATTENTION
            ),
            Card("lora", rank=8),
            prepare=_pissa_save_initial,
            save={"path_initial_model_for_weight_conversion": str(_PISSA_INITIAL)},
        ),
        Case(
            "alora",
            "llama",
            peft(
                "LoraConfig",
                r=8,
                lora_alpha=16,
                alora_invocation_tokens=[5, 9],
                target_modules=ATTENTION,
            ),
            Card(
                "lora",
                "alora",
                8,
                none_when_merged=False,
                details={"alora_invocation_tokens": [5, 9]},
            ),
            export=_refused_everywhere("aLoRA"),
        ),
        *(
            Case(
                f"bias-{bias.replace('_', '-')}-{family}",
                family,
                peft("LoraConfig", r=4, lora_alpha=8, bias=bias, target_modules=ATTENTION),
                Card("lora", rank=4, details={"bias": bias}),
                export={
                    "safetensors": MERGED,
                    "vllm-bundle": Refused("a trained bias (bias='all'/'lora_only') on model."),
                },
            )
            for bias in ("all", "lora_only")
            for family in ("qwen2",)  # the family with biases (q/k/v)
        ),
        Case(
            "mica",
            "llama",
            peft(
                "LoraConfig", r=4, lora_alpha=8, init_lora_weights="mica", target_modules=ATTENTION
            ),
            Card("lora", "mica", 4),
        ),
        Case(
            "unknown-key-on",
            "llama",
            peft("LoraConfig", r=4, lora_alpha=8, target_modules=ATTENTION),
            Card(
                "lora",
                rank=4,
                details={"unknown_config_keys": ["future_variant_config", "use_future_variant"]},
            ),
            export={"safetensors": Refused("'use_future_variant'")},
            edit_config={"use_future_variant": True, "future_variant_config": None},
        ),
        Case(
            "unknown-key-off",
            "llama",
            peft("LoraConfig", r=4, lora_alpha=8, target_modules=ATTENTION),
            Card(
                "lora",
                rank=4,
                details={"unknown_config_keys": ["future_variant_config", "use_future_variant"]},
            ),
            edit_config={"use_future_variant": False, "future_variant_config": None},
        ),
    ]
)


def _generic_types() -> list[Case]:
    """Every PEFT type the hub cards generically (``schemas.methods``), built with the configs
    of ``tests.peft_types`` (sized for tiny models). Poly, multitask prompt tuning (both need
    task ids in the forward pass) and X-LoRA (its LoRAs in subfolders, no KV cache) are in
    ``test_generic_types.py``."""
    from schemas.methods import METHODS
    from tests.peft_types import GENERIC_TYPES, NEEDS, SPECIAL_FORWARD

    cases = []
    for peft_type, kwargs in sorted(GENERIC_TYPES.items()):
        if peft_type in SPECIAL_FORWARD:
            continue
        row = METHODS[peft_type]
        config = _generic_config(peft_type, kwargs)
        built = config()
        rank = built.num_virtual_tokens if row.family == "prompt" else getattr(built, "r", None)
        export: dict[str, Merged | Refused] = {"safetensors": Refused(NOT_MERGEABLE)}
        if row.merge == "peft":
            export = {"safetensors": MERGED, "gguf": Refused(PEFT_ONLY)}
        if peft_type == "beft":  # PEFT merges a bias delta only into a layer with a bias
            export = {"safetensors": Refused("Base layer has no bias, cannot merge bias")}
            cases.append(Case("beft-qwen2", "qwen2", config, Card("beft", none_when_merged=True)))
        card = Card(
            peft_type,
            rank=rank if isinstance(rank, int) else None,
            targets=("self_attn",) if peft_type == "adaption_prompt" else None,
            params_note=row.params_note,
            none_when_merged=row.family == "mergeable",
        )
        cases.append(
            Case(
                peft_type.replace("_", "-"),
                "llama",
                config,
                card,
                export=export,
                needs=NEEDS.get(peft_type),
            )
        )
    return cases


def _generic_config(peft_type: str, kwargs: dict[str, Any]) -> Callable[[], Any]:
    def build() -> Any:
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        return PEFT_TYPE_TO_CONFIG_MAPPING[peft_type.upper()](task_type="CAUSAL_LM", **kwargs)

    return build


def _lora_variant(key: str, sub_config: str, **kwargs: Any) -> Callable[[], Any]:
    """A LoRA config with peft 0.21's variant sub-config ``key=peft...<sub_config>(...)``
    (keyword arguments the sub-config takes go to it, the rest to the LoraConfig)."""

    def build() -> Any:
        import dataclasses

        import peft as peft_module
        from peft.tuners.lora import config as lora_config

        cls = getattr(lora_config, sub_config)
        names = {f.name for f in dataclasses.fields(cls)}
        sub = cls(**{k: v for k, v in kwargs.items() if k in names})
        rest = {k: v for k, v in kwargs.items() if k not in names}
        return peft_module.LoraConfig(
            task_type="CAUSAL_LM", r=4, lora_alpha=8, **{key: sub}, **rest
        )

    return build


CASES += _generic_types()

# -- valid adapters that were refused (issue 9): each is carded and merged now -------------
EMBEDDINGS = ["q_proj", "embed_tokens", "lm_head"]
# PEFT saves the targeted embedding layers' base weights beside the adapter (frozen copies).
VELORA = {"init_type": "batch_average", "num_groups": 64, "scale": 1.0}
MONTECLORA = {
    "buffer_size": 150,
    "dirichlet_prior": 0.1,
    "kl_loss_weight": 1e-05,
    "num_samples": 8,
    "sample_scaler": 0.0001,
    "use_entropy": False,
}
BDLORA = {"target_modules_bd_a": ["q_proj"], "target_modules_bd_b": ["o_proj"], "nblocks": 2}
TOKENS = [3, 5, 7, 42]  # rows of new or retrained tokens (IDS uses 5, 7 and 42)
SAVED_EMBEDDINGS = {"saved_embedding_layers": ["lm_head", "model.embed_tokens"], "vocab_size": 128}

CASES.extend(
    [
        *(
            Case(
                f"{variant}-embeddings-{family}",
                family,
                peft(
                    "LoraConfig",
                    r=4,
                    lora_alpha=8,
                    use_dora=variant == "dora",
                    target_modules=EMBEDDINGS,
                ),
                Card(
                    "lora",
                    "dora" if variant == "dora" else None,
                    4,
                    details=SAVED_EMBEDDINGS,
                ),
            )
            for variant in ("lora", "dora")
            for family in ("llama", "llama-tied")
        ),
        *(
            Case(
                f"trainable-tokens-{family}",
                family,
                peft("LoraConfig", r=4, target_modules=ATTENTION, trainable_token_indices=TOKENS),
                Card(
                    "lora",
                    rank=4,
                    targets=("embed_tokens", "q_proj", "v_proj"),
                    details={"trainable_token_indices": TOKENS},
                ),
            )
            for family in ("llama", "llama-tied")
        ),
        Case(
            "moe-experts-mixtral",
            "mixtral",
            peft(
                "LoraConfig",
                r=4,
                lora_alpha=8,
                target_modules=["q_proj"],
                target_parameters=["experts.gate_up_proj", "experts.down_proj"],
            ),
            # PEFT stores r x experts rows per factor; the card's rank is r.
            Card(
                "lora",
                rank=4,
                targets=("down_proj", "gate_up_proj", "q_proj"),
                details={"experts": 4},
            ),
        ),
        Case(
            "moe-router-mixtral",
            "mixtral",
            peft("LoraConfig", r=4, lora_alpha=8, target_modules=["gate"]),
            Card("lora", rank=4, targets=("gate",), details={"target_parameters": ["gate.weight"]}),
        ),
        *(
            Case(
                f"{variant}-llama",
                "llama",
                _lora_variant(key, sub_config, target_modules=ATTENTION),
                Card("lora", variant, 4, details={key: details}),
            )
            for variant, key, sub_config, details in (
                ("kasa", "kasa_config", "KasaConfig", {"beta": 0.0001, "gamma": 0.001}),
                ("velora", "velora_config", "VeloraConfig", VELORA),
                ("monteclora", "monteclora_config", "MontecloraConfig", MONTECLORA),
            )
        ),
        Case(
            "bdlora-llama",
            "llama",
            _lora_variant(
                "use_bdlora", "BdLoraConfig", target_modules=["q_proj", "o_proj"], **BDLORA
            ),
            Card("lora", "bdlora", 4, details={"use_bdlora": {**BDLORA, "match_strict": True}}),
        ),
        Case(
            "lora-bias-llama",
            "llama",
            peft("LoraConfig", r=4, lora_alpha=8, target_modules=ATTENTION, lora_bias=True),
            Card("lora", rank=4, details={"lora_bias": True}),
            export={
                "safetensors": Refused(
                    "has a LoRA bias (lora_bias=true) but the base's"
                    " model.layers.0.self_attn.q_proj has no bias to merge it into"
                )
            },
        ),
        Case(
            "lora-bias-qwen2",  # q/v have biases there: the LoRA bias merges into them
            "qwen2",
            peft("LoraConfig", r=4, lora_alpha=8, target_modules=ATTENTION, lora_bias=True),
            Card("lora", rank=4, details={"lora_bias": True}),
        ),
        Case(
            "layer-replication",
            "llama",
            peft(
                "LoraConfig",
                r=4,
                lora_alpha=8,
                target_modules=ATTENTION,
                layer_replication=[[0, 2], [1, 2]],
            ),
            Card("lora", rank=4, details={"layers": [0, 1, 2]}),
            export={
                "safetensors": Refused(
                    "uses layer_replication [[0, 2], [1, 2]]: PEFT builds a 3-layer model from"
                    " the base's 2 layers"
                )
            },
        ),
        Case(
            "ensure-weight-tying-lm-head",
            "llama-tied",
            peft(
                "LoraConfig",
                r=4,
                lora_alpha=8,
                target_modules=["q_proj", "lm_head"],
                ensure_weight_tying=True,
            ),
            Card("lora", rank=4, details={"ensure_weight_tying": True}),
        ),
        Case(
            "ensure-weight-tying-modules-to-save",
            "llama-tied",
            peft(
                "LoraConfig",
                r=4,
                lora_alpha=8,
                target_modules=ATTENTION,
                modules_to_save=["lm_head"],
                ensure_weight_tying=True,
            ),
            Card("lora", rank=4, details={"ensure_weight_tying": True}),
        ),
        Case(
            "trainable-tokens-lm-head",
            "llama",
            peft(
                "LoraConfig",
                r=4,
                target_modules=ATTENTION,
                trainable_token_indices={"embed_tokens": TOKENS, "lm_head": [2, 9]},
            ),
            Card("lora", rank=4, targets=("embed_tokens", "lm_head", "q_proj", "v_proj")),
        ),
    ]
)


_IDS = [case.id for case in CASES]
assert len(set(_IDS)) == len(_IDS), "duplicate case ids"


@pytest.fixture(scope="session")
def bases(tmp_path_factory) -> Bases:
    return Bases(tmp_path_factory.mktemp("fidelity-bases"))


def _param(case: Case) -> Any:
    import importlib.util

    missing = case.needs is not None and importlib.util.find_spec(case.needs) is None
    reason = f"needs {case.needs}, which the project does not depend on"
    return pytest.param(case, marks=pytest.mark.skipif(missing, reason=reason))


@pytest.mark.parametrize("case", [_param(case) for case in CASES], ids=_IDS)
def test_fidelity(case: Case, registry, bases, tmp_path) -> None:
    run_case(case, registry, bases, tmp_path)


def test_every_peft_type_has_a_case():
    """Every PEFT type's card (parameter counts against PEFT's included) is checked here, but
    the few ``test_generic_types.py`` runs apart (their forward needs task ids, or X-LoRA)."""
    from schemas.methods import METHODS
    from tests.peft_types import SPECIAL_FORWARD

    carded = {case.push.method for case in CASES if isinstance(case.push, Card)}
    assert sorted(set(METHODS) - carded) == sorted(SPECIAL_FORWARD)
