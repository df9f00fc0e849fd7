"""What the hub knows and supports for every PEFT type and variant: the one fact table.

``ROWS`` has one row per PEFT type of the PEFT release the hub is tested against (peft 0.21.2),
plus one row per variant that changes what can be done with an adapter (DoRA, rsLoRA...).
Inspection (the card), export (which merge path, which formats) and the README's method table
all read it, and ``tests/schemas/test_methods.py`` checks it against the installed PEFT
(every ``PeftType`` has a row, its family and tensor prefix agree) and against the README.

Adding a variant is one ``Row(...)`` in ``ROWS`` with its ``method`` and ``variant``, then
``python -m tests.render_methods`` (or the failing test's diff) for the README.

No torch, no I/O: ``hub ls`` imports the card schema, which imports this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Family = Literal["prompt", "mergeable", "layers"]
"""PEFT's method family, which decides the inference overhead of an unmerged adapter:
``prompt`` (prompt learning: virtual tokens, ``extra_tokens``), ``mergeable`` (a tuner whose
layers fold into the base weights, ``none_when_merged``), ``layers`` (a tuner that keeps extra
computation at inference, ``extra_layers``)."""

Merge = Literal["streamed", "peft", "none"]
"""How ``hub export`` merges it: ``streamed`` (the hub's own shard-by-shard merge, memory of a
few tensors), ``peft`` (PEFT's ``merge_and_unload`` on the whole model in memory, safetensors
only), ``none`` (refused: PEFT itself cannot merge it)."""


@dataclass(frozen=True)
class Row:
    """One method or variant and what each hub operation supports for it."""

    method: str
    """The card's ``method``: the PEFT type, lowercase."""
    family: Family
    merge: Merge
    variant: str | None = None
    """None for the method's own row; else the card's ``variant`` exactly as the card names it
    (``dora``, ``alora``, ``mica``...), or a config feature in words (``bias='all'``...)."""
    card: Literal["specific", "generic"] = "generic"
    """``specific``: ``hub.inspect.methods`` checks every shape against the config and reads
    rank/alpha; ``generic``: the card lists modules, tensors and counts, shapes unchecked."""
    prefix: str | None = None
    """Name prefix of the per-module tensors (PEFT's tuner ``prefix``), for grouping keys."""
    frozen: tuple[str, ...] = ()
    """Name parts of tensors PEFT saves but does not train (not counted as trainable)."""
    params_note: str | None = None
    """Why the card's count still differs from PEFT's ``get_nb_trainable_parameters()``."""
    gguf_fp8: bool | None = None
    """Whether gguf and fp8 exports work; None: exactly when the merge is streamed."""
    gguf_lora: bool = False
    vllm_bundle: bool = False
    compose: tuple[str, ...] | None = None
    """Operators accepting it; None: those whose ``methods`` name ``method`` (compose.operators)."""
    note: str = ""
    """What the README says beside the row (a limit, why something is refused)."""

    @property
    def label(self) -> str:
        return self.method if self.variant is None else f"{self.method} + {self.variant}"

    @property
    def merged_formats(self) -> bool:
        """gguf and fp8 need the streamed merge (they quantize tensor by tensor), and a base
        architecture they know (``gguf_fp8=False`` where the variant's bases are not one)."""
        return self.merge == "streamed" if self.gguf_fp8 is None else self.gguf_fp8


_NO_MERGE = "PEFT cannot merge it ({why}); export refused"

ROWS: tuple[Row, ...] = (
    # -- the methods the hub reads in full (hub.inspect.methods) ----------------------------
    Row("lora", "mergeable", "streamed", card="specific", prefix="lora_", gguf_lora=True,
        vllm_bundle=True),
    Row("lora", "mergeable", "streamed", variant="rslora", card="specific", prefix="lora_",
        gguf_lora=True, vllm_bundle=True),
    Row("lora", "mergeable", "streamed", variant="dora", card="specific", prefix="lora_",
        compose=("stack",), note="merge operators refuse DoRA (its weight depends on the base)"),
    Row("lora", "mergeable", "streamed", variant="modules_to_save", card="specific",
        prefix="lora_", compose=("stack",),
        note="saved modules replace the base's; gguf-lora and vLLM cannot carry them"),
    Row("lora", "mergeable", "streamed", variant="rank_pattern / alpha_pattern", card="specific",
        prefix="lora_", gguf_lora=True, vllm_bundle=True,
        note="vllm-bundle folds each module's own scale into B"),
    Row("lora", "mergeable", "streamed", variant="mica", card="specific", prefix="lora_",
        gguf_lora=True, vllm_bundle=True, note="its frozen lora_B is not counted as trained"),
    Row("lora", "mergeable", "none", variant="alora", card="specific", prefix="lora_",
        compose=("stack",),
        note="activated LoRA applies from its invocation tokens on: no merged weight or LoRA"
        " file expresses it (PEFT: 'aLoRA does not support merging')"),
    Row("lora", "mergeable", "none", variant="PiSSA / OLoRA init, unconverted",
        card="specific", prefix="lora_", compose=("stack",),
        note="PEFT loads it onto a changed base; save it with"
        " path_initial_model_for_weight_conversion to get a plain LoRA"),
    Row("lora", "mergeable", "streamed", variant="PiSSA / OLoRA init, converted",
        card="specific", prefix="lora_", gguf_lora=True, vllm_bundle=True,
        note="a plain LoRA of rank 2r on the original base"),
    Row("lora", "mergeable", "streamed", variant="embed_tokens / lm_head", card="specific",
        prefix="lora_", note="PEFT's saved copies of the embedding layers are read as the base's"
        "; gguf-lora and vLLM refuse LoRA on embeddings"),
    Row("lora", "mergeable", "streamed", variant="trainable_token_indices", card="specific",
        prefix="lora_", compose=("stack",),
        note="the retrained rows are written into the embedding (and lm_head)"),
    Row("lora", "mergeable", "streamed", variant="MoE experts (target_parameters)",
        card="specific", prefix="lora_", gguf_fp8=False, compose=("stack",),
        note="one delta per expert, written to the checkpoint's own expert tensors; gguf and"
        " fp8 export no MoE base"),
    Row("lora", "mergeable", "streamed", variant="MoE router (gate)", card="specific",
        prefix="lora_", gguf_fp8=False, note="gguf and fp8 export no MoE base"),
    Row("lora", "mergeable", "streamed", variant="bias='all' / 'lora_only'", card="specific",
        prefix="lora_", compose=("stack",), note="the trained biases replace the base's"),
    Row("lora", "mergeable", "streamed", variant="lora_bias", card="specific", prefix="lora_",
        compose=("stack",), note="refused onto a base layer without a bias"),
    Row("lora", "mergeable", "streamed", variant="bdlora", card="specific", prefix="lora_",
        compose=("stack",)),
    Row("lora", "mergeable", "streamed", variant="kasa", card="specific", prefix="lora_",
        compose=("stack",)),
    Row("lora", "mergeable", "streamed", variant="velora", card="specific", prefix="lora_",
        note="its activation buffer only acts in training"),
    Row("lora", "mergeable", "streamed", variant="monteclora", card="specific", prefix="lora_",
        note="its sampler only acts in training"),
    Row("lora", "mergeable", "none", variant="layer_replication", card="specific",
        prefix="lora_", compose=("stack",),
        note="PEFT builds more layers than the base has; serve it unmerged"),
    Row("adalora", "mergeable", "streamed", card="specific", prefix="lora_"),
    Row("ia3", "mergeable", "streamed", card="specific", prefix="ia3_"),
    Row("loha", "mergeable", "streamed", card="specific", prefix="hada_"),
    Row("lokr", "mergeable", "streamed", card="specific", prefix="lokr_"),
    Row("oft", "mergeable", "peft", card="specific", prefix="oft_"),
    Row("boft", "mergeable", "peft", card="specific", prefix="boft_"),
    Row("vera", "mergeable", "streamed", card="specific", prefix="vera_lambda_",
        frozen=("vera_A", "vera_B")),
    Row("prompt_tuning", "prompt", "none", card="specific",
        note=_NO_MERGE.format(why="virtual tokens")),
    Row("prefix_tuning", "prompt", "none", card="specific",
        note=_NO_MERGE.format(why="virtual key/value tokens per layer")),
    Row("p_tuning", "prompt", "none", card="specific",
        note=_NO_MERGE.format(why="virtual tokens from a prompt encoder")),
    # -- every other PEFT type: a generic card, PEFT's own merge where it has one -----------
    Row("adamss", "mergeable", "peft", prefix="adamss_", frozen=("adamss_newB",),
        note="PEFT needs scikit-learn to build, load or merge it"),
    Row("adaption_prompt", "layers", "none", prefix="adaption_",
        note=_NO_MERGE.format(why="gated prompts inside attention")),
    Row("beft", "mergeable", "peft", prefix="beft_",
        note="PEFT merges it only into layers that have a bias (not Llama's)"),
    Row("c3a", "mergeable", "peft", prefix="c3a_"),
    Row("cartridge", "prompt", "none",
        params_note="the first num_frozen_tokens rows of prompt_embeddings are frozen",
        note=_NO_MERGE.format(why="a trained KV cache prefix")),
    Row("cpt", "prompt", "none", note=_NO_MERGE.format(why="context-aware virtual tokens")),
    Row("deft", "mergeable", "peft", prefix="deft_"),
    Row("delora", "mergeable", "peft", prefix="delora_", frozen=("delora_w_norm",)),
    Row("fourierft", "mergeable", "peft", prefix="fourierft_"),
    Row("frod", "mergeable", "peft", prefix="frod_",
        frozen=("frod_V.", "frod_s_indices.", "frod_s_size.")),
    Row("glora", "mergeable", "peft", prefix="glora_", frozen=(".zeros",)),
    Row("gralora", "mergeable", "peft", prefix="gralora_"),
    Row("hira", "mergeable", "peft", prefix="hira_"),
    Row("hra", "mergeable", "peft", prefix="hra_"),
    Row("lily", "layers", "none", prefix="lily_",
        params_note="lily_B is shared by the layers it serves: saved per layer, counted once"
        " by PEFT",
        note=_NO_MERGE.format(why="a router mixes shared experts per input")),
    Row("ln_tuning", "mergeable", "peft", prefix="ln_tuning_"),
    Row("miss", "mergeable", "peft", prefix="miss_"),
    Row("multitask_prompt_tuning", "prompt", "none",
        note=_NO_MERGE.format(why="virtual tokens per task id")),
    Row("osf", "mergeable", "peft", prefix="osf_"),
    Row("peanut", "mergeable", "peft", prefix="peanut_"),
    Row("poly", "layers", "none", prefix="poly_",
        note=_NO_MERGE.format(why="a router mixes LoRA skills per task id")),
    Row("psoft", "mergeable", "peft", prefix="psoft_"),
    Row("pvera", "mergeable", "peft", prefix="pvera_lambda_", frozen=("pvera_A", "pvera_B")),
    Row("randlora", "mergeable", "peft", prefix="randlora_",
        frozen=("randlora_A", "randlora_B")),
    Row("road", "mergeable", "peft", prefix="road_"),
    Row("shadow", "layers", "none", prefix="shadow_",
        note=_NO_MERGE.format(why="an input-dependent shadow network")
        + "; its target_modules are whole decoder blocks (PEFT's forward fails on linear"
        " layers)"),
    Row("shira", "mergeable", "peft", prefix="shira_", frozen=("shira_indices",)),
    Row("supertuning", "mergeable", "peft", prefix="supertuning_",
        frozen=("supertuning_indices",)),
    Row("tinylora", "mergeable", "peft", prefix="tinylora_",
        frozen=("tinylora_A", "tinylora_B", "tinylora_P")),
    Row("trainable_tokens", "mergeable", "peft", prefix="trainable_tokens_"),
    Row("unilora", "mergeable", "peft", prefix="unilora_"),
    Row("vblora", "mergeable", "peft", prefix="vblora_"),
    Row("waveft", "mergeable", "peft", prefix="waveft_"),
    Row("xlora", "layers", "none", prefix="lora_",
        params_note="counts every value of its subfolders (its LoRAs, its classifier and the"
        " base tensors PEFT saves with them); PEFT trains only the classifier",
        note=_NO_MERGE.format(why="a classifier mixes its LoRAs per token")
        + "; PEFT 0.21.2 reloads it from the LoRA paths its config names, not from the"
        " subfolders it saves, and draws its classifier anew on every load"),
)  # fmt: skip

METHODS: dict[str, Row] = {row.method: row for row in ROWS if row.variant is None}
"""Method (lowercase PEFT type) -> its own row."""

PROMPT_METHODS: frozenset[str] = frozenset(m for m, r in METHODS.items() if r.family == "prompt")


def method_row(method: str, variant: str | None = None) -> Row:
    """The row of ``method`` with ``variant`` if the table has one, else the method's own.

    Raises:
        KeyError: ``method`` is not a PEFT type the hub knows.
    """
    for row in ROWS:
        if row.method == method and row.variant == variant and variant is not None:
            return row
    return METHODS[method]
