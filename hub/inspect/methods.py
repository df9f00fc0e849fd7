"""Per-method reading of an adapter's tensors: which modules it adapts, at what rank, and
whether the shapes agree with the config. Works on safetensors headers only (no torch)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.inspect.config import (
    CONFIG,
    get_bool,
    get_float,
    get_int,
    get_names,
    get_pattern,
    module_matches,
    pattern_value,
)
from hub.inspect.safetensors_header import TensorInfo, read_small_tensor
from schemas.errors import InvalidAdapter

WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."

# Tensor-name suffixes each method saves per adapted module (PEFT strips the adapter name).
SUFFIXES: dict[str, tuple[str, ...]] = {
    "lora": (
        "lora_A.weight", "lora_B.weight", "lora_B.bias", "lora_magnitude_vector.weight",
        "lora_magnitude_vector", "lora_embedding_A", "lora_embedding_B",
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
PROMPT_METHODS = ("prompt_tuning", "prefix_tuning", "p_tuning")
_TRAINABLE_TOKENS = ".token_adapter.trainable_tokens_delta"


@dataclass
class Analysis:
    """What the tensors say, checked against the config."""

    rank: int | None = None
    alpha: float | None = None
    variant: str | None = None
    modules: list[str] = field(default_factory=list)
    saved_modules: list[str] = field(default_factory=list)
    frozen_keys: set[str] = field(default_factory=set)
    """Tensors saved with the adapter that are not trained (VeRA's shared projections)."""
    extra_tokens: int = 0
    details: dict[str, Any] = field(default_factory=dict)


def _shape_error(module: str, message: str) -> InvalidAdapter:
    return InvalidAdapter(f"{WEIGHTS}: module {module!r} {message}", module=module)


def group_by_module(
    method: str, config: dict[str, Any], tensors: dict[str, TensorInfo]
) -> tuple[dict[str, dict[str, TensorInfo]], list[str], set[str]]:
    """Split tensor keys into {module: {suffix: info}}, modules_to_save, and shared keys."""
    suffixes = sorted(SUFFIXES[method], key=len, reverse=True)
    modules_to_save = get_names(config, "modules_to_save")
    grouped: dict[str, dict[str, TensorInfo]] = {}
    saved: set[str] = set()
    shared: set[str] = set()
    for key, info in tensors.items():
        if method == "vera" and key.split(".")[-1] in ("vera_A", "vera_B"):
            shared.add(key)
            continue
        name = key.removeprefix(_PREFIX)
        suffix = next((s for s in suffixes if name.endswith("." + s)), None)
        if suffix is not None:
            grouped.setdefault(name[: -len(suffix) - 1], {})[suffix] = info
            continue
        if _TRAINABLE_TOKENS in name:
            saved.add(name.split(_TRAINABLE_TOKENS)[0])
            continue
        module = name.rsplit(".", 1)[0]
        if module_matches(module, modules_to_save):
            saved.add(module)
            continue
        raise InvalidAdapter(
            f"{WEIGHTS}: tensor {key!r} is neither a {method} tensor nor part of a module in"
            f" modules_to_save ({CONFIG})",
            module=module,
        )
    return grouped, sorted(saved), shared


def check_targets(config: dict[str, Any], modules: list[str]) -> None:
    """Every adapted module must be one the config targets."""
    targets = get_names(config, "target_modules")
    if targets is None:
        return  # PEFT fills defaults per architecture at training time; nothing to hold against
    for module in modules:
        if not module_matches(module, targets):
            raise InvalidAdapter(
                f"{WEIGHTS}: module {module!r} has adapter weights but is not in"
                f" target_modules {targets!r} ({CONFIG})",
                module=module,
            )


def _need(parts: dict[str, TensorInfo], module: str, *names: str) -> TensorInfo:
    for name in names:
        if name in parts:
            return parts[name]
    raise _shape_error(module, f"is missing its {names[0]} tensor")


def _expected_rank(config: dict[str, Any], module: str, field: str = "r") -> tuple[int, str]:
    default = get_int(config, field)
    pattern = get_pattern(config, "rank_pattern")
    rank = pattern_value(pattern, module, default)
    origin = f"{field}={default}"
    if rank is not default:
        key = next(k for k in pattern if re.match(rf"(.*\.)?({k})$", module))
        origin = f"rank_pattern[{key!r}]={rank}"
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise InvalidAdapter(f"{CONFIG}: field {field!r} must be an integer", field=field)
    return rank, origin


def _rank_mismatch(module: str, got: int, where: str, origin: str) -> InvalidAdapter:
    return _shape_error(module, f"has rank {got} in {where} but {CONFIG} says {origin}")


def analyse_lora(config: dict[str, Any], groups: dict[str, dict[str, TensorInfo]]) -> Analysis:
    out = Analysis(alpha=get_float(config, "lora_alpha"))
    use_dora, use_rslora = get_bool(config, "use_dora"), get_bool(config, "use_rslora")
    out.variant = "dora" if use_dora else ("rslora" if use_rslora else None)
    ranks: dict[str, int] = {}
    for module, parts in sorted(groups.items()):
        expected, origin = _expected_rank(config, module)
        embedding = "lora_embedding_A" in parts
        a = _need(parts, module, "lora_embedding_A" if embedding else "lora_A.weight")
        b = _need(parts, module, "lora_embedding_B" if embedding else "lora_B.weight")
        a_name = "lora_embedding_A" if embedding else "lora_A.weight"
        b_name = "lora_embedding_B" if embedding else "lora_B.weight"
        if len(a.shape) < 2 or a.shape[0] != expected:
            raise _rank_mismatch(module, a.shape[0] if a.shape else 0, a_name, origin)
        if len(b.shape) < 2 or b.shape[1] != expected:
            raise _rank_mismatch(module, b.shape[1] if len(b.shape) > 1 else 0, b_name, origin)
        magnitude = parts.get("lora_magnitude_vector") or parts.get("lora_magnitude_vector.weight")
        if magnitude is not None and magnitude.numel != b.shape[0]:
            raise _shape_error(
                module, f"has a DoRA magnitude of {magnitude.numel} values for {b.shape[0]} outputs"
            )
        if use_dora and magnitude is None and not embedding:
            raise _shape_error(module, f"has no lora_magnitude_vector but {CONFIG} says use_dora")
        ranks[module] = expected
    out.rank = max(ranks.values(), default=get_int(config, "r"))
    alpha_pattern = get_pattern(config, "alpha_pattern")
    out.details.update(
        module_ranks=ranks if len(set(ranks.values())) > 1 else {},
        rank_pattern=get_pattern(config, "rank_pattern"),
        alpha_pattern=alpha_pattern,
        use_rslora=use_rslora,
        use_dora=use_dora,
        fan_in_fan_out=get_bool(config, "fan_in_fan_out"),
    )
    return out


def analyse_adalora(
    config: dict[str, Any], groups: dict[str, dict[str, TensorInfo]], weights: Path
) -> Analysis:
    out = Analysis(alpha=get_float(config, "lora_alpha"))
    init_r = get_int(config, "init_r", get_int(config, "r"))
    pattern = get_pattern(config, "rank_pattern")
    effective: dict[str, int] = {}
    for module, parts in sorted(groups.items()):
        a = _need(parts, module, "lora_A", "lora_A.weight")
        b = _need(parts, module, "lora_B", "lora_B.weight")
        e = _need(parts, module, "lora_E", "lora_E.weight")
        mask = pattern_value(pattern, module, None)
        stored = a.shape[0]
        expected, origin = (init_r, f"init_r={init_r}")
        if isinstance(mask, list):
            expected, origin = sum(bool(v) for v in mask), f"rank_pattern (mask of {len(mask)})"
        if stored != expected:
            raise _rank_mismatch(module, stored, "lora_A", origin)
        if b.shape[-1] != stored or e.shape[0] != stored:
            raise _shape_error(
                module,
                f"has inconsistent ranks: lora_A {stored}, lora_B {b.shape[-1]},"
                f" lora_E {e.shape[0]}",
            )
        # Pruned triplets have their singular value zeroed (or are cut out when saved with a
        # rank_pattern): the effective rank is what survives.
        values = read_small_tensor(weights, e)
        effective[module] = int((values != 0).sum())
    out.rank = max(effective.values(), default=0)
    out.details.update(
        module_ranks=effective,
        init_r=init_r,
        target_r=get_int(config, "target_r"),
        rank_budget=sum(effective.values()),
    )
    return out


def analyse_ia3(config: dict[str, Any], groups: dict[str, dict[str, TensorInfo]]) -> Analysis:
    feedforward = get_names(config, "feedforward_modules")
    for module, parts in sorted(groups.items()):
        vector = _need(parts, module, "ia3_l", "ia3_l.weight")
        is_ff = module_matches(module, feedforward)
        if len(vector.shape) == 2 and (vector.shape[0] == 1) != is_ff and vector.numel > 1:
            kind = "a feedforward" if is_ff else "an attention"
            raise _shape_error(
                module, f"is {kind} module in {CONFIG} but its ia3_l has shape {vector.shape}"
            )
    return Analysis(details={"feedforward_modules": feedforward})


def analyse_loha_lokr(
    method: str, config: dict[str, Any], groups: dict[str, dict[str, TensorInfo]]
) -> Analysis:
    out = Analysis(alpha=get_float(config, "alpha"))
    ranks: dict[str, int] = {}
    for module, parts in sorted(groups.items()):
        expected, origin = _expected_rank(config, module)
        if method == "loha":
            w1b = _need(parts, module, "hada_w1_b")
            observed = {
                "hada_w1_a": _need(parts, module, "hada_w1_a").shape[1],
                "hada_w1_b": w1b.shape[0],
                "hada_w2_a": _need(parts, module, "hada_w2_a").shape[1],
                "hada_w2_b": _need(parts, module, "hada_w2_b").shape[0],
            }
        else:
            if "lokr_w1" not in parts:
                _need(parts, module, "lokr_w1_a")
            if "lokr_w2" not in parts:
                _need(parts, module, "lokr_w2_a")
            # Factors stored whole (small matrices) carry no rank; decomposed ones must match.
            observed = {
                name: parts[name].shape[1] for name in ("lokr_w1_a", "lokr_w2_a") if name in parts
            }
        for name, got in observed.items():
            if got != expected:
                raise _rank_mismatch(module, got, name, origin)
        ranks[module] = expected
    out.rank = max(ranks.values(), default=get_int(config, "r"))
    out.details.update(
        module_ranks=ranks if len(set(ranks.values())) > 1 else {},
        rank_pattern=get_pattern(config, "rank_pattern"),
        alpha_pattern=get_pattern(config, "alpha_pattern"),
    )
    if method == "lokr":
        out.details["decompose_both"] = get_bool(config, "decompose_both")
    return out


def analyse_oft(config: dict[str, Any], groups: dict[str, dict[str, TensorInfo]]) -> Analysis:
    block_size = get_int(config, "oft_block_size", 0) or 0
    blocks: dict[str, int] = {}
    for module, parts in sorted(groups.items()):
        r = _need(parts, module, "oft_R.weight", "oft_r")
        if len(r.shape) == 2 and block_size:
            # The skew-symmetric parameterisation stores b(b-1)/2 values per block.
            stored = r.shape[1]
            if stored != block_size * (block_size - 1) // 2:
                size = (1 + math.isqrt(1 + 8 * stored)) // 2
                raise _shape_error(
                    module,
                    f"has OFT blocks of size {size} but {CONFIG} says oft_block_size={block_size}",
                )
        blocks[module] = r.shape[0]
    return Analysis(
        details={
            "oft_block_size": block_size,
            "module_blocks": blocks,
            "coft": get_bool(config, "coft"),
        }
    )


def analyse_boft(config: dict[str, Any], groups: dict[str, dict[str, TensorInfo]]) -> Analysis:
    block_size = get_int(config, "boft_block_size", 0) or 0
    for module, parts in sorted(groups.items()):
        r = _need(parts, module, "boft_R")
        _need(parts, module, "boft_s")
        if block_size and len(r.shape) == 4 and r.shape[-1] != block_size:
            raise _shape_error(
                module,
                f"has BOFT blocks of size {r.shape[-1]} but {CONFIG} says"
                f" boft_block_size={block_size}",
            )
    return Analysis(
        details={
            "boft_block_size": block_size,
            "boft_block_num": get_int(config, "boft_block_num"),
            "boft_n_butterfly_factor": get_int(config, "boft_n_butterfly_factor"),
        }
    )


def analyse_vera(config: dict[str, Any], groups: dict[str, dict[str, TensorInfo]]) -> Analysis:
    r = get_int(config, "r")
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


def analyse_prompt(method: str, config: dict[str, Any], tensors: dict[str, TensorInfo]) -> Analysis:
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
    submodules = get_int(config, "num_transformer_submodules", 1) or 1
    token_dim = get_int(config, "token_dim")
    layers = get_int(config, "num_layers")
    rows, width = (*embeddings.shape, 0, 0)[:2]
    if rows != tokens * submodules:
        raise InvalidAdapter(
            f"{WEIGHTS}: prompt_embeddings has {rows} rows but {CONFIG} says"
            f" num_virtual_tokens={tokens} x num_transformer_submodules={submodules}",
            field="num_virtual_tokens",
        )
    expected_width = token_dim
    if method == "prefix_tuning" and token_dim is not None and layers is not None:
        expected_width = layers * 2 * token_dim  # a key and a value prefix per layer
    if expected_width is not None and width != expected_width:
        raise InvalidAdapter(
            f"{WEIGHTS}: prompt_embeddings is {width} wide but {CONFIG} implies {expected_width}"
            + (
                f" (num_layers={layers} x 2 x token_dim={token_dim})"
                if method == "prefix_tuning"
                else f" (token_dim={token_dim})"
            ),
            field="token_dim",
        )
    details = {
        "token_dim": token_dim,
        "num_layers": layers,
        "num_transformer_submodules": submodules,
    }
    if method == "prompt_tuning":
        details["prompt_tuning_init"] = config.get("prompt_tuning_init")
    if method == "p_tuning":
        details["encoder_reparameterization_type"] = config.get("encoder_reparameterization_type")
    return Analysis(rank=tokens, extra_tokens=tokens, details=details)
