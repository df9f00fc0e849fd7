"""Per-method reading of an adapter's tensors: rank, alpha and method facts, with every shape
checked against the config. Works on safetensors headers only (no torch); AdaLoRA's few
singular values are the only tensor data read."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compose.peft_patterns import (
    LORA_VARIANT_STATE,
    adalora_mask_module,
    block_diagonal_factor,
    lora_variant,
    parameter_targets,
)
from hub.inspect.config import (
    CONFIG,
    get_bool,
    get_float,
    get_int,
    get_names,
    get_pattern,
    matches,
    pattern_key,
)
from hub.inspect.safetensors_header import TensorInfo, read_small_tensor
from schemas.errors import InvalidAdapter

WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."

# Tensor-name suffixes each method saves per adapted module (PEFT strips the adapter name;
# the ``.weight`` forms are what older PEFT versions wrote).
SUFFIXES: dict[str, tuple[str, ...]] = {
    "lora": (
        "lora_A.weight", "lora_B.weight", "lora_B.bias", "lora_magnitude_vector.weight",
        "lora_magnitude_vector", "lora_embedding_A", "lora_embedding_B",
        *(name for names in LORA_VARIANT_STATE.values() for name in names),
    ),
    "adalora": ("lora_A.weight", "lora_B.weight", "lora_E.weight", "lora_A", "lora_B", "lora_E"),
    "ia3": ("ia3_l.weight", "ia3_l"),
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
    "lokr": (
        "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    ),
    "oft": ("oft_R.weight", "oft_r", "oft_s"),
    "boft": ("boft_R", "boft_s"),
    "vera": ("vera_lambda_b", "vera_lambda_d"),
}  # fmt: skip

TensorInfoGroups = dict[str, dict[str, TensorInfo]]
"""Adapted module -> {tensor suffix: header entry}."""


@dataclass
class Analysis:
    """What the tensors say, checked against the config."""

    rank: int | None = None
    alpha: float | None = None
    variant: str | None = None
    modules: list[str] = field(default_factory=list)
    saved_modules: list[str] = field(default_factory=list)
    bias_modules: list[str] = field(default_factory=list)
    extra_tokens: int = 0
    mergeable: bool = True
    """False when no merged weight equals the adapter (aLoRA): it always runs unmerged."""
    frozen: set[str] = field(default_factory=set)
    """Keys of stored tensors PEFT keeps frozen (MiCA's lora_B): not counted as trainable."""
    groups: TensorInfoGroups = field(default_factory=dict)
    """Adapted module -> its tensors (``hub.inspect.modules.group_by_module``), for the ledger."""
    copies: set[str] = field(default_factory=set)
    """Keys of base embedding weights PEFT saved beside the adapter."""
    nested_modules: int = 0
    """X-LoRA: the LoRA layers of its first nested adapter (its classifier's output size)."""
    details: dict[str, Any] = field(default_factory=dict)


def _shape_error(module: str, message: str) -> InvalidAdapter:
    return InvalidAdapter(f"{WEIGHTS}: module {module!r} {message}", module=module)


def _need(parts: dict[str, TensorInfo], module: str, *names: str) -> TensorInfo:
    for name in names:
        if name in parts:
            return parts[name]
    raise _shape_error(module, f"is missing its {names[0]} tensor")


def _dim(module: str, info: TensorInfo, axis: int, ndim: int = 2) -> int:
    """``info.shape[axis]``, refusing a tensor that does not have ``ndim`` dimensions."""
    if len(info.shape) != ndim:
        name = info.key.rsplit(module + ".", 1)[-1]
        raise _shape_error(module, f"has a {name} of shape {info.shape}, not {ndim}-D")
    return info.shape[axis]


def _expected_rank(config: dict[str, Any], module: str) -> tuple[int, str]:
    """The module's rank per ``rank_pattern`` or ``r``, and where it comes from (for errors)."""
    default = get_int(config, "r")
    pattern = get_pattern(config, "rank_pattern")
    key = pattern_key(pattern, module, "rank_pattern")
    rank = default if key is None else pattern[key]
    origin = f"r={default}" if key is None else f"rank_pattern[{key!r}]={rank}"
    if not isinstance(rank, int) or isinstance(rank, bool):
        field_name = "r" if key is None else "rank_pattern"
        raise InvalidAdapter(
            f"{CONFIG}: field {field_name!r} must be an integer, got {rank!r}", field=field_name
        )
    return rank, origin


def _rank_mismatch(module: str, got: int, where: str, origin: str) -> InvalidAdapter:
    return _shape_error(module, f"has rank {got} in {where} but {CONFIG} says {origin}")


def _varying(per_module: dict[str, int]) -> dict[str, int]:
    """Per-module values, kept only when they differ (a uniform value is in the card already)."""
    return per_module if len(set(per_module.values())) > 1 else {}


def _lora_variant(config: dict[str, Any]) -> str | None:
    """The variant that defines the adapter most: DoRA, aLoRA, MiCA, BD-LoRA / KaSA / VeLoRA /
    MonteCLoRA, then rsLoRA scaling."""
    if get_bool(config, "use_dora"):
        return "dora"
    if config.get("alora_invocation_tokens"):
        return "alora"
    if config.get("init_lora_weights") == "mica":
        return "mica"
    return lora_variant(config) or ("rslora" if get_bool(config, "use_rslora") else None)


def analyse_lora(config: dict[str, Any], groups: TensorInfoGroups) -> Analysis:
    """LoRA, rsLoRA, DoRA, aLoRA, MiCA: lora_A is (r, in), lora_B is (out, r), r per
    ``rank_pattern``. aLoRA only runs unmerged; MiCA's lora_B is stored but frozen."""
    use_dora, use_rslora = get_bool(config, "use_dora"), get_bool(config, "use_rslora")
    out = Analysis(alpha=get_float(config, "lora_alpha"), variant=_lora_variant(config))
    out.mergeable = out.variant != "alora"
    ranks: dict[str, int] = {}
    experts: dict[str, int] = {}
    frozen = 0
    for module, parts in sorted(groups.items()):
        expected, origin = _expected_rank(config, module)
        embedding = "lora_embedding_A" in parts
        a_name = "lora_embedding_A" if embedding else "lora_A.weight"
        b_name = "lora_embedding_B" if embedding else "lora_B.weight"
        a, b = _need(parts, module, a_name), _need(parts, module, b_name)
        stored = _dim(module, a, 0)
        if (
            expected
            and stored % expected == 0
            and stored > expected
            and parameter_targets(module, config.get("target_parameters"))
        ):
            # PEFT's ParamWrapper on an expert stack: r rows per expert in both factors.
            experts[module] = stored // expected
            expected, origin = stored, f"{origin} x {experts[module]} experts"
        if stored != expected:
            raise _rank_mismatch(module, a.shape[0], a_name, origin)
        b_rank, b_origin = expected, origin
        if block_diagonal_factor(module, config.get("use_bdlora")) == "B":
            blocks = get_int(config["use_bdlora"], "nblocks", 1) or 1
            b_rank, b_origin = expected // blocks, f"{origin} / nblocks={blocks} (BD-LoRA)"
        if _dim(module, b, 1) != b_rank:
            raise _rank_mismatch(module, b.shape[1], b_name, b_origin)
        _check_variant_state(config, module, parts, expected)
        magnitude = parts.get("lora_magnitude_vector") or parts.get("lora_magnitude_vector.weight")
        if magnitude is not None and magnitude.numel != b.shape[0]:
            raise _shape_error(
                module, f"has a DoRA magnitude of {magnitude.numel} values for {b.shape[0]} outputs"
            )
        if use_dora and magnitude is None and not embedding:
            raise _shape_error(module, f"has no lora_magnitude_vector but {CONFIG} says use_dora")
        ranks[module] = expected // experts.get(module, 1)
        if out.variant == "mica":  # PEFT registers B as a frozen weight (MiCALinearVariant)
            out.frozen.add(b.key)
            frozen += b.numel
    out.rank = max(ranks.values(), default=get_int(config, "r"))
    out.details.update(
        params_frozen=frozen,
        module_ranks=_varying(ranks),
        rank_pattern=get_pattern(config, "rank_pattern"),
        alpha_pattern=get_pattern(config, "alpha_pattern"),
        use_rslora=use_rslora,
        use_dora=use_dora,
    )
    if experts:
        counts = set(experts.values())
        out.details["experts"] = counts.pop() if len(counts) == 1 else experts
    return out


def _check_variant_state(
    config: dict[str, Any], module: str, parts: dict[str, TensorInfo], rank: int
) -> None:
    """A variant's per-module tensors only with that variant enabled; KaSA's ``lora_diag``
    holds one value per rank component."""
    for key, names in LORA_VARIANT_STATE.items():
        present = [name for name in names if name in parts]
        if present and not config.get(key):
            raise _shape_error(module, f"has a {present[0]} tensor but {CONFIG} has no {key}")
    diag = parts.get("lora_diag")
    if diag is not None and diag.numel != rank:
        raise _rank_mismatch(module, diag.numel, "lora_diag", f"r={rank}")


def analyse_adalora(config: dict[str, Any], groups: TensorInfoGroups, weights: Path) -> Analysis:
    """AdaLoRA: the card's rank is the effective rank, the triplets that survived pruning.

    Saved tensors hold ``init_r`` triplets, or fewer when PEFT already cut them down to the
    ``rank_pattern`` mask; within those, a pruned triplet has its singular value (lora_E) zero.
    """
    out = Analysis(alpha=get_float(config, "lora_alpha"))
    init_r = get_int(config, "init_r", get_int(config, "r"))
    masks = _adalora_masks(get_pattern(config, "rank_pattern"))
    effective: dict[str, int] = {}
    for module, parts in sorted(groups.items()):
        a = _need(parts, module, "lora_A", "lora_A.weight")
        b = _need(parts, module, "lora_B", "lora_B.weight")
        e = _need(parts, module, "lora_E", "lora_E.weight")
        stored = _dim(module, a, 0)
        expected, origin = init_r, f"init_r={init_r}"
        mask = masks.get(module)
        if mask is not None:
            kept = sum(bool(v) for v in mask)
            expected, origin = kept, f"rank_pattern keeps {kept} of {len(mask)}"
        if stored != expected:
            raise _rank_mismatch(module, stored, "lora_A", origin)
        if _dim(module, b, 1) != stored or _dim(module, e, 0) != stored:
            raise _shape_error(
                module,
                f"has inconsistent ranks: lora_A {stored}, lora_B {b.shape[1]},"
                f" lora_E {e.shape[0]}",
            )
        effective[module] = int((read_small_tensor(weights, e) != 0).sum())
    out.rank = max(effective.values(), default=0)
    out.details.update(
        module_ranks=effective,
        init_r=init_r,
        target_r=get_int(config, "target_r"),
        rank_budget=sum(effective.values()),
    )
    return out


def _adalora_masks(pattern: dict[str, Any]) -> dict[str, list[Any]]:
    """AdaLoRA's ``rank_pattern`` by module name.

    Unlike LoRA's (a regex per key), it is written by AdaLoRA's rank allocator: one boolean
    mask per lora_E parameter (see ``compose.peft_patterns.adalora_mask_module``).
    """
    masks: dict[str, list[Any]] = {}
    for key, mask in pattern.items():
        if not isinstance(mask, list) or not all(isinstance(v, bool | int) for v in mask):
            raise InvalidAdapter(
                f"{CONFIG}: rank_pattern[{key!r}] must be a list of booleans (AdaLoRA's mask),"
                f" got {mask!r}",
                field="rank_pattern",
            )
        masks[adalora_mask_module(key)] = mask
    return masks


def analyse_ia3(config: dict[str, Any], groups: TensorInfoGroups) -> Analysis:
    """IA3: one scaling vector per module, (1, in) for feedforward modules, else (out, 1)."""
    feedforward = get_names(config, "feedforward_modules")
    for module, parts in sorted(groups.items()):
        vector = _need(parts, module, "ia3_l", "ia3_l.weight")
        is_ff = matches(module, feedforward, "feedforward_modules")
        if len(vector.shape) == 2 and (vector.shape[0] == 1) != is_ff and vector.numel > 1:
            kind = "a feedforward" if is_ff else "an attention"
            raise _shape_error(
                module, f"is {kind} module in {CONFIG} but its ia3_l has shape {vector.shape}"
            )
    return Analysis(details={"feedforward_modules": feedforward})


def analyse_loha_lokr(method: str, config: dict[str, Any], groups: TensorInfoGroups) -> Analysis:
    """LoHa: two Hadamard-multiplied rank-r products; LoKr: a Kronecker product whose
    decomposed factors have rank r (factors stored whole carry no rank)."""
    out = Analysis(alpha=get_float(config, "alpha"))
    ranks: dict[str, int] = {}
    for module, parts in sorted(groups.items()):
        expected, origin = _expected_rank(config, module)
        if method == "loha":
            w1a, w1b = _need(parts, module, "hada_w1_a"), _need(parts, module, "hada_w1_b")
            w2a, w2b = _need(parts, module, "hada_w2_a"), _need(parts, module, "hada_w2_b")
            observed = {
                "hada_w1_a": _dim(module, w1a, 1),
                "hada_w1_b": w1b.shape[0] if w1b.shape else 0,
                "hada_w2_a": _dim(module, w2a, 1),
                "hada_w2_b": w2b.shape[0] if w2b.shape else 0,
            }
        else:
            if "lokr_w1" not in parts:
                _need(parts, module, "lokr_w1_a")
            if "lokr_w2" not in parts:
                _need(parts, module, "lokr_w2_a")
            observed = {
                name: _dim(module, parts[name], 1)
                for name in ("lokr_w1_a", "lokr_w2_a")
                if name in parts
            }
        for name, got in observed.items():
            if got != expected:
                raise _rank_mismatch(module, got, name, origin)
        ranks[module] = expected
    out.rank = max(ranks.values(), default=get_int(config, "r"))
    out.details.update(
        module_ranks=_varying(ranks),
        rank_pattern=get_pattern(config, "rank_pattern"),
        alpha_pattern=get_pattern(config, "alpha_pattern"),
    )
    if method == "lokr":
        out.details["decompose_both"] = get_bool(config, "decompose_both")
    return out


def analyse_oft(config: dict[str, Any], groups: TensorInfoGroups) -> Analysis:
    """OFT: the card's rank is the number of orthogonal blocks per module (PEFT's ``r``; with
    ``r=0`` PEFT derives it as in_features // oft_block_size); the block size is in details."""
    configured_r = get_int(config, "r", 0) or 0
    configured_size = get_int(config, "oft_block_size", 0) or 0
    shared = get_bool(config, "block_share")
    blocks: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for module, parts in sorted(groups.items()):
        r = _need(parts, module, "oft_R.weight", "oft_r")
        if len(r.shape) == 2:
            # The skew-symmetric parameterisation stores b(b-1)/2 values per block.
            size = (1 + math.isqrt(1 + 8 * r.shape[1])) // 2
            if size * (size - 1) // 2 != r.shape[1]:
                raise _shape_error(
                    module, f"has an oft_R of width {r.shape[1]}, not b(b-1)/2 for any block size b"
                )
        elif len(r.shape) == 3 and r.shape[1] == r.shape[2]:
            size = r.shape[1]  # older PEFT saved whole b x b blocks
        else:
            raise _shape_error(module, f"has an oft_R of unexpected shape {r.shape}")
        if configured_size and size != configured_size:
            raise _shape_error(
                module,
                f"has OFT blocks of size {size} but {CONFIG} says oft_block_size={configured_size}",
            )
        sizes[module] = size
        if shared:
            continue  # one block repeated along the diagonal: the stored count says nothing
        if configured_r and r.shape[0] != configured_r:
            raise _shape_error(
                module, f"has {r.shape[0]} OFT blocks but {CONFIG} says r={configured_r}"
            )
        blocks[module] = r.shape[0]
    unique_sizes = sorted(set(sizes.values()))
    return Analysis(
        rank=(configured_r or None) if shared else max(blocks.values(), default=None),
        details={
            "oft_block_size": unique_sizes[0] if len(unique_sizes) == 1 else configured_size,
            "module_blocks": _varying(blocks),
            "module_block_sizes": _varying(sizes),
            "block_share": shared,
            "coft": get_bool(config, "coft"),
        },
    )


def analyse_boft(config: dict[str, Any], groups: TensorInfoGroups) -> Analysis:
    """BOFT: boft_R is (butterfly factors, blocks, block size, block size); no rank."""
    configured = {
        "boft_block_size": get_int(config, "boft_block_size", 0) or 0,
        "boft_block_num": get_int(config, "boft_block_num", 0) or 0,
    }
    found: dict[str, set[int]] = {"boft_block_size": set(), "boft_block_num": set()}
    for module, parts in sorted(groups.items()):
        r = _need(parts, module, "boft_R")
        _need(parts, module, "boft_s")
        if len(r.shape) != 4 or r.shape[2] != r.shape[3]:
            raise _shape_error(module, f"has a boft_R of unexpected shape {r.shape}")
        for name, got in (("boft_block_size", r.shape[3]), ("boft_block_num", r.shape[1])):
            if configured[name] and got != configured[name]:
                raise _shape_error(
                    module,
                    f"has {name} {got} in boft_R but {CONFIG} says {name}={configured[name]}",
                )
            found[name].add(got)
    details: dict[str, Any] = {
        name: configured[name] or (min(values) if len(values) == 1 else sorted(values))
        for name, values in found.items()
    }
    details["boft_n_butterfly_factor"] = get_int(config, "boft_n_butterfly_factor")
    return Analysis(details=details)


def analyse_vera(
    config: dict[str, Any], groups: TensorInfoGroups, shared: dict[str, TensorInfo]
) -> Analysis:
    """VeRA: per module lambda_d (r) and lambda_b (out); the shared frozen projections vera_A
    (r, in) and vera_B (out, r) are saved once when ``save_projection`` is on."""
    r = get_int(config, "r")
    for key, info in sorted(shared.items()):
        axis = 0 if key.endswith("vera_A") else 1
        if len(info.shape) != 2 or info.shape[axis] != r:
            raise InvalidAdapter(
                f"{WEIGHTS}: shared projection {key!r} has shape {info.shape}, which does not"
                f" have rank {CONFIG}'s r={r}",
                tensor=key,
            )
    for module, parts in sorted(groups.items()):
        d = _need(parts, module, "vera_lambda_d")
        _need(parts, module, "vera_lambda_b")
        if d.numel != r:
            raise _rank_mismatch(module, d.numel, "vera_lambda_d", f"r={r}")
    return Analysis(
        rank=r,
        details={
            "save_projection": config.get("save_projection", True),
            "projection_prng_key": config.get("projection_prng_key"),
        },
    )


# Why a prompt adapter's stored count is not PEFT's trainable count: PEFT saves the prompt the
# encoder computes (``get_prompt_embedding_to_save``), not the encoder it trained.
_ENCODER_NOTE = (
    "params_trainable counts the saved prompt (num_virtual_tokens x width); {method} trains a"
    " {encoder} whose weights PEFT counts as trainable but does not save"
)


def analyse_prompt(method: str, config: dict[str, Any], tensors: dict[str, TensorInfo]) -> Analysis:
    """Prompt methods save one table, prompt_embeddings: (virtual tokens x transformer
    submodules) rows of token_dim (prefix tuning: a key and a value per layer, so
    num_layers * 2 * token_dim)."""
    tokens = get_int(config, "num_virtual_tokens")
    if tokens is None:
        raise InvalidAdapter(
            f"{CONFIG}: field 'num_virtual_tokens' is missing", field="num_virtual_tokens"
        )
    embeddings = tensors.get("prompt_embeddings")
    if embeddings is None:
        raise InvalidAdapter(f"{WEIGHTS}: no 'prompt_embeddings' tensor for {method}")
    others = sorted(set(tensors) - {"prompt_embeddings"})
    if others:
        raise InvalidAdapter(f"{WEIGHTS}: unexpected tensor {others[0]!r} in a {method} adapter")
    if len(embeddings.shape) != 2:
        raise InvalidAdapter(
            f"{WEIGHTS}: prompt_embeddings has shape {embeddings.shape}, not (tokens, width)"
        )
    submodules = get_int(config, "num_transformer_submodules", 1) or 1
    token_dim = get_int(config, "token_dim")
    layers = get_int(config, "num_layers")
    rows, width = embeddings.shape
    if rows != tokens * submodules:
        raise InvalidAdapter(
            f"{WEIGHTS}: prompt_embeddings has {rows} rows but {CONFIG} says"
            f" num_virtual_tokens={tokens} x num_transformer_submodules={submodules}",
            field="num_virtual_tokens",
        )
    expected_width, origin = token_dim, f"token_dim={token_dim}"
    if method == "prefix_tuning" and token_dim is not None and layers is not None:
        expected_width = layers * 2 * token_dim
        origin = f"num_layers={layers} x 2 x token_dim={token_dim}"
    if expected_width is not None and width != expected_width:
        raise InvalidAdapter(
            f"{WEIGHTS}: prompt_embeddings is {width} wide but {CONFIG} implies"
            f" {expected_width} ({origin})",
            field="token_dim",
        )
    details: dict[str, Any] = {
        "token_dim": token_dim,
        "num_layers": layers,
        "num_transformer_submodules": submodules,
    }
    if method == "prompt_tuning":
        details["prompt_tuning_init"] = config.get("prompt_tuning_init")
    elif method == "p_tuning":
        details["encoder_reparameterization_type"] = config.get("encoder_reparameterization_type")
        details["params_note"] = _ENCODER_NOTE.format(method=method, encoder="prompt encoder")
    elif method == "prefix_tuning":
        details["prefix_projection"] = get_bool(config, "prefix_projection")
        if details["prefix_projection"]:
            details["params_note"] = _ENCODER_NOTE.format(
                method=method, encoder="prefix projection"
            )
    return Analysis(rank=tokens, extra_tokens=tokens, details=details)
