"""The card of an AdapterHub save (``compose.adapterhub`` holds the format's facts).

Every tensor is assigned to one part of the config (a bottleneck module, a LoRA/IA3 module,
the prefix pool, a gate, Compacter's shared PHM rule) and its shapes are checked against the
config: a bottleneck's down projection has ``hidden_size // reduction_factor`` outputs (the
card's ``rank``), a LoRA's ``lora_A`` has ``r`` rows, the prefix pool's embedding has
``prefix_length`` rows. Headers only, no torch.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compose.adapterhub import (
    CONFIG,
    HEAD_CONFIG,
    HEAD_WEIGHTS,
    LIBRARY,
    WEIGHTS,
    architecture,
    method_configs,
)
from hub.formats.adapterhub import refuse_pickle
from hub.inspect.config import load_config
from hub.inspect.params import base_param_count, base_weight_shapes
from hub.inspect.readme import readme_description
from hub.inspect.safetensors_header import TensorInfo, find_nonfinite, read_safetensors_header
from schemas.card import InferenceOverhead, InspectedAdapter
from schemas.errors import InvalidAdapter

_KNOWN = ("bottleneck", "prefix_tuning", "lora")
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
"""The numbered layer container of a tensor's path (BERT ``layer``, Llama ``layers``, GPT-2
``h``, T5 ``block``)."""


@dataclass
class _Part:
    """One method config of the save and the tensors that belong to it."""

    method: str
    config: dict[str, Any]
    modules: dict[str, dict[str, TensorInfo]] = field(default_factory=dict)
    """Adapted module (the model's path) -> {tensor suffix: header entry}."""


def inspect_adapterhub(
    folder: Path,
    *,
    allow_nonfinite: bool = False,
    base_config: dict[str, Any] | None = None,
    base_dirs: Any = None,
) -> InspectedAdapter:
    """Read an AdapterHub save (``model.save_adapter(folder, name)``) into a card.

    Method ``bottleneck`` (variant ``houlsby``, ``pfeiffer``, ``parallel``, ``compacter``,
    ``compacter++``), ``prefix_tuning``, ``lora``, ``ia3``, or ``union`` for a mix (variant
    ``mam`` / ``unipelt`` when it is one of those, ``details.parts`` lists every part).

    Raises:
        UnsafeFormat: only pickle weights (``pytorch_adapter.bin``): ``hub convert``.
        InvalidAdapter: a malformed config, an architecture the hub does not read, a tensor
            that belongs to no part of the config or whose shape contradicts it, NaN/Inf.
    """
    config = load_config(folder)
    refuse_pickle(folder, config)
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidAdapter(
            f"{CONFIG}: field 'name' (the adapter's name in adapters) is missing", field="name"
        )
    hidden = config.get("hidden_size")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden <= 0:
        raise InvalidAdapter(
            f"{CONFIG}: field 'hidden_size' must be a positive integer, got {hidden!r}",
            field="hidden_size",
        )
    blocks = method_configs(config)
    if not blocks:
        raise InvalidAdapter(f"{CONFIG}: field 'config' holds no method config", field="config")
    for block in blocks:
        if architecture(block) not in _KNOWN:
            raise InvalidAdapter(
                f"{CONFIG}: architecture {architecture(block)!r} is not one the hub reads"
                " (it reads AdapterHub's bottleneck adapters, prefix tuning, LoRA, IA3 and"
                " their unions such as MAM and UniPELT)",
                field="config.architecture",
            )
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise InvalidAdapter(
            f"{folder}: no {WEIGHTS}: the adapter's weights are missing", path=str(folder)
        )
    tensors, _ = read_safetensors_header(weights)
    parts = [_Part(_method(block), block) for block in blocks]
    counted = _assign(tensors, name, parts)
    for part in parts:
        _check(part, hidden)
    if not allow_nonfinite:
        bad = find_nonfinite(weights, tensors)
        if bad is not None:
            raise InvalidAdapter(
                f"{WEIGHTS}: tensor {bad!r} contains NaN or Inf values"
                " (push with --allow-nonfinite to accept it)",
                tensor=bad,
            )
    base_model = config.get("model_name") or None
    params_base = base_param_count(base_model, base_config, base_dirs)
    summaries = [_summary(part, hidden) for part in parts]
    main = summaries[0] if len(parts) == 1 else _union(summaries)
    layered = [p for p in parts if p.method != "prefix_tuning"]
    details: dict[str, Any] = {
        "adapter_name": name,
        "model_type": config.get("model_type"),
        "model_class": config.get("model_class"),
        "hidden_size": hidden,
        "adapters_version": config.get("version"),
        **{k: v for k, v in main.items() if k not in ("method", "variant", "rank")},
        # Every tensor's layer, the prefix pool's per-layer copies included.
        "layers": sorted({int(n) for key in tensors for n in _LAYER.findall(key)[:1]}),
    }
    head = _head(folder)
    if head is not None:
        details["head"] = head
    dtypes = {t.dtype.lower() for t in tensors.values()}
    return InspectedAdapter(
        library=LIBRARY,
        base_model=base_model if isinstance(base_model, str) else None,
        method=main["method"],
        variant=main.get("variant"),
        rank=main.get("rank"),
        alpha=main.get("alpha"),
        target_modules=sorted({m.rsplit(".", 1)[-1] for p in layered for m in p.modules}),
        **_ledger(
            parts,
            tensors,
            counted,
            params_base,
            head,
            functools.cache(lambda: base_weight_shapes(base_model, base_dirs)),
        ),
        size_bytes=sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        dtypes=sorted(dtypes),
        inference_overhead=InferenceOverhead(
            # LoRA and IA3 without gates fold into the weights (adapters' merge_adapter); a
            # bottleneck keeps its non-linearity between the projections, a prefix its tokens.
            none_when_merged=all(
                p.method in ("lora", "ia3") and not p.config.get("use_gating") for p in parts
            ),
            extra_tokens=sum(
                int(p.config.get("prefix_length") or 0)
                for p in parts
                if p.method == "prefix_tuning"
            ),
            extra_layers=sum(len(p.modules) for p in layered),
        ),
        details={k: v for k, v in details.items() if v not in (None, [], {}, "")},
        description=readme_description(folder / "README.md"),
    )


def _unmergeable(part: _Part) -> str | None:
    """Why a part cannot be folded into the base weights; None when it can (adapters'
    ``merge_adapter`` folds an ungated LoRA or IA3 into the weights it adapts)."""
    block = part.config
    if part.method == "bottleneck":
        return (
            f"its {_variant(block)} bottleneck applies a non-linearity"
            f" ({block.get('non_linearity')}) between the down and up projections"
        )
    if block.get("use_gating"):
        return f"its {part.method} is gated (use_gating): the gate depends on the input"
    return None


def _ledger(
    parts: list[_Part],
    tensors: dict[str, TensorInfo],
    counted: list[str],
    params_base: int | None,
    head: dict[str, Any] | None,
    base_shapes: Any,
) -> dict[str, Any]:
    """The parameter ledger (``hub.inspect.ledger``'s fields) of an AdapterHub save.

    - trained = stored: every tensor of the save is a parameter ``train_adapter`` trains (the
      prefix pool once, not its per-layer copies).
    - changed when merged: d x k of every weight a LoRA / IA3 part adapts (LoRA's ``lora_B``
      is (d, r), ``lora_A`` (r, k); IA3 saves only ``lora_B`` (d, 1), so its d x k comes from
      the base's weight shapes, ``base_shapes``, when readable); prefix tuning rewrites none
      (0, as PEFT's prompt methods); None as soon as one part cannot merge (a bottleneck's
      non-linearity, a gate).
    - extra at inference: every stored value (the unmerged forward reads all of them; prefix
      tuning runs its pool's MLP on every forward pass).
    """
    from hub.inspect.ledger import NO_BASE, fractions

    stored = sum(tensors[key].numel for key in counted)
    by_dtype: dict[str, int] = {}
    for key in counted:
        dtype = tensors[key].dtype.lower()
        by_dtype[dtype] = by_dtype.get(dtype, 0) + tensors[key].numel
    unknown: dict[str, str] = {}
    changed: int | None = 0
    for part in parts:
        why = _unmergeable(part)
        if why is not None:
            changed = None
            unknown.setdefault(
                "params_changed_when_merged",
                f"it cannot be merged into the base weights: {why} (it runs unmerged only)",
            )
        elif part.method == "lora":
            for group in part.modules.values():
                changed = _add(changed, group["lora_B"].shape[0] * group["lora_A"].shape[1])
        elif part.method == "ia3":  # lora_B (d, 1) scales the rows: the base's k is needed
            for module in part.modules:
                size = _base_weight(base_shapes, module)
                if size is None:
                    unknown.setdefault(
                        "params_changed_when_merged",
                        NO_BASE.format(what=f"the shape of the base weight of {module!r}"),
                    )
                changed = None if size is None else _add(changed, size)
    notes: dict[str, str] = {}
    if head is not None:
        notes["params_trained"] = (
            f"the prediction head's {head.get('params', 0)} values (details.head) are counted"
            + (
                " apart: it is the base model's own head, saved beside the adapter"
                if head.get("head_type") == "static"
                else " apart, though train_adapter trains them with the adapter"
            )
        )
    values = {
        "params_trained": stored,
        "params_stored": stored,
        "params_changed_when_merged": changed,
        "params_extra_at_inference": stored,
    }
    return {
        **values,
        "params_stored_by_dtype": dict(sorted(by_dtype.items())),
        "params_unknown": unknown,
        "params_notes": notes,
        **fractions(values, params_base),
    }


def _add(total: int | None, value: int) -> int | None:
    return None if total is None else total + value


def _base_weight(base_shapes: Any, module: str) -> int | None:
    """d x k of the base weight of ``module``, a path in the model that saved the adapter: the
    base's own file may lack the head model's prefix (``bert.`` of a BertAdapterModel)."""
    shapes = base_shapes()
    if not shapes:
        return None
    parts = module.split(".")
    for start in range(min(3, len(parts))):
        shape = shapes.get(".".join(parts[start:]) + ".weight")
        if shape:
            return math.prod(shape)
    return None


def _method(block: dict[str, Any]) -> str:
    arch = architecture(block)
    if arch == "lora" and block.get("composition_mode") == "scale":
        return "ia3"
    return arch


# What each part's tensors look like: (part method, regex with the adapter's name).
def _patterns(name: str) -> list[tuple[str, re.Pattern[str]]]:
    n = re.escape(name)
    return [
        ("lora", re.compile(rf"^(?P<module>.+)\.loras\.{n}\.(?P<part>.+)$")),
        ("bottleneck", re.compile(rf"^(?P<module>.+)\.adapters\.{n}\.(?P<part>.+)$")),
        ("prefix_gate", re.compile(rf"^(?P<module>.+)\.prefix_gates\.{n}\.(?P<part>.+)$")),
        # The pool once at the model level, and once more under every layer that uses it.
        ("prefix_copy", re.compile(rf"^(?P<module>.+)\.pool\.prefix_tunings\.{n}\.(?P<part>.+)$")),
        ("prefix_tuning", re.compile(rf"^(?P<module>.*)prefix_tunings\.{n}\.(?P<part>.+)$")),
        ("shared", re.compile(rf"^(?P<module>.*)shared_parameters\.{n}\.(?P<part>.+)$")),
    ]


def _assign(tensors: dict[str, TensorInfo], name: str, parts: list[_Part]) -> list[str]:
    """Put every tensor into its part; return the keys counted as trainable parameters (the
    prefix pool once, not its per-layer copies)."""
    by_method = {p.method if p.method != "ia3" else "lora": p for p in parts}
    counted = []
    for key, info in tensors.items():
        kind, module, suffix = next(
            ((k, m["module"], m["part"]) for k, rx in _patterns(name) if (m := rx.match(key))),
            (None, "", ""),
        )
        if kind is None:
            raise InvalidAdapter(
                f"{WEIGHTS}: tensor {key!r} belongs to no part of adapter {name!r}"
                f" (its {CONFIG} names the adapter {name!r}: is this the file save_adapter"
                " wrote for it?)",
                tensor=key,
            )
        owner = {"prefix_gate": "prefix_tuning", "prefix_copy": "prefix_tuning"}.get(kind, kind)
        if owner == "shared":
            owner = "bottleneck"  # Compacter's PHM rule, shared by its layers
        part = by_method.get(owner)
        if part is None:
            raise InvalidAdapter(
                f"{WEIGHTS}: tensor {key!r} is a {owner} tensor, but {CONFIG} of adapter"
                f" {name!r} has no {owner} config",
                tensor=key,
            )
        if kind in ("lora", "bottleneck"):
            part.modules.setdefault(module, {})[suffix] = info
        elif kind == "prefix_tuning":
            part.modules.setdefault("prefix_pool", {})[suffix] = info
        if kind != "prefix_copy":
            counted.append(key)
    return counted


def _reduction(block: dict[str, Any], module: str) -> float:
    """The reduction factor of ``module``'s layer (a number, or a per-layer mapping)."""
    factor = block.get("reduction_factor")
    if isinstance(factor, dict):
        layer = re.findall(r"\.(\d+)\.", f"{module}.")
        factor = factor.get(layer[0]) if layer and layer[0] in factor else factor.get("default")
    if isinstance(factor, bool) or not isinstance(factor, int | float) or factor <= 0:
        raise InvalidAdapter(
            f"{CONFIG}: field 'reduction_factor' must be a positive number (or a mapping of"
            f" layer to number with a 'default'), got {block.get('reduction_factor')!r}",
            field="reduction_factor",
        )
    return float(factor)


def _check(part: _Part, hidden: int) -> None:
    """Shapes against the config; raise ``InvalidAdapter`` naming the tensor."""
    if not part.modules:
        raise InvalidAdapter(
            f"{WEIGHTS}: no tensors of its {part.method} config", field="config.architecture"
        )
    for module, group in sorted(part.modules.items()):
        if part.method == "bottleneck":
            expected = max(1, int(hidden // _reduction(part.config, module)))
            down = group.get("adapter_down.0.weight") or group.get("adapter_down.0.b")
            if down is None:
                raise InvalidAdapter(
                    f"{WEIGHTS}: module {module!r} has no adapter_down tensor", module=module
                )
            if down.shape[0] != expected:
                raise InvalidAdapter(
                    f"{WEIGHTS}: tensor {down.key!r} has bottleneck dimension {down.shape[0]},"
                    f" but {CONFIG} gives hidden_size {hidden} // reduction_factor"
                    f" {_reduction(part.config, module):g} = {expected}",
                    tensor=down.key,
                )
        elif part.method == "lora":
            a = group.get("lora_A")
            r = part.config.get("r")
            if a is None or "lora_B" not in group:
                raise InvalidAdapter(
                    f"{WEIGHTS}: module {module!r} lacks lora_A or lora_B", module=module
                )
            if a.shape[0] != r:
                raise InvalidAdapter(
                    f"{WEIGHTS}: tensor {a.key!r} has rank {a.shape[0]}, but {CONFIG} says r={r}",
                    tensor=a.key,
                )
        elif part.method == "prefix_tuning":
            wte = group.get("self_prefix.wte.weight")
            length = part.config.get("prefix_length")
            if wte is not None and wte.shape[0] != length:
                raise InvalidAdapter(
                    f"{WEIGHTS}: tensor {wte.key!r} holds {wte.shape[0]} prefix positions,"
                    f" but {CONFIG} says prefix_length={length}",
                    tensor=wte.key,
                )


def _variant(block: dict[str, Any]) -> str:
    """Houlsby (after attention and after the FFN), Pfeiffer (after the FFN only), parallel
    (beside the layer), Compacter (PHM layers in Houlsby's places; ++ in Pfeiffer's)."""
    if block.get("phm_layer"):
        return "compacter" if block.get("mh_adapter") else "compacter++"
    if block.get("is_parallel"):
        return "parallel"
    if block.get("mh_adapter") and block.get("output_adapter"):
        return "houlsby"
    if block.get("output_adapter"):
        return "pfeiffer"
    return "attention-only"


def _placement(block: dict[str, Any]) -> list[str]:
    where = [
        name
        for name, flag in (("after_attention", "mh_adapter"), ("after_ffn", "output_adapter"))
        if block.get(flag)
    ]
    if block.get("is_parallel"):
        return ["parallel_" + w.removeprefix("after_") for w in where]
    return where


def _summary(part: _Part, hidden: int) -> dict[str, Any]:
    """The card fields and details of one part."""
    block = part.config
    if part.method == "bottleneck":
        dims = sorted({max(1, int(hidden // _reduction(block, m))) for m in part.modules})
        out: dict[str, Any] = {
            "method": "bottleneck",
            "variant": _variant(block),
            "rank": dims[0] if len(dims) == 1 else max(dims),
            "architecture": "bottleneck",
            "reduction_factor": block.get("reduction_factor"),
            "placement": _placement(block),
            "non_linearity": block.get("non_linearity"),
            "original_ln_before": block.get("original_ln_before"),
            "original_ln_after": block.get("original_ln_after"),
            "residual_before_ln": block.get("residual_before_ln"),
            "scaling": block.get("scaling"),
            "use_gating": block.get("use_gating") or None,
            "modules": len(part.modules),
        }
        if len(dims) > 1:
            out["bottleneck_dims"] = dims
        if block.get("phm_layer"):
            out["phm"] = {
                k: block.get(k)
                for k in (
                    "phm_dim",
                    "phm_rank",
                    "shared_phm_rule",
                    "shared_W_phm",
                    "factorized_phm_W",
                    "factorized_phm_rule",
                    "learn_phm",
                    "hypercomplex_nonlinearity",
                )
            }
        return out
    if part.method == "prefix_tuning":
        return {
            "method": "prefix_tuning",
            "rank": block.get("prefix_length"),
            "architecture": "prefix_tuning",
            "prefix_length": block.get("prefix_length"),
            "bottleneck_size": block.get("bottleneck_size"),
            "non_linearity": block.get("non_linearity"),
            "flat": block.get("flat"),
            "use_gating": block.get("use_gating") or None,
        }
    return {
        "method": part.method,
        "rank": block.get("r") if part.method == "lora" else None,
        "alpha": float(block["alpha"]) if part.method == "lora" and "alpha" in block else None,
        "architecture": "lora",
        "composition_mode": block.get("composition_mode"),
        "attn_matrices": block.get("attn_matrices"),
        "intermediate_lora": block.get("intermediate_lora"),
        "output_lora": block.get("output_lora"),
        "use_gating": block.get("use_gating") or None,
        "modules": len(part.modules),
    }


def _union(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``union`` card: MAM is prefix tuning + a parallel bottleneck (He et al. 2021),
    UniPELT gated prefix tuning + a gated bottleneck + gated LoRA (Mao et al. 2022)."""
    kinds = sorted(s["method"] for s in summaries)
    bottleneck = next((s for s in summaries if s["method"] == "bottleneck"), None)
    variant = None
    parallel = bottleneck is not None and bottleneck["variant"] == "parallel"
    if kinds == ["bottleneck", "prefix_tuning"] and parallel:
        variant = "mam"
    elif kinds == ["bottleneck", "lora", "prefix_tuning"] and all(
        s.get("use_gating") for s in summaries
    ):
        variant = "unipelt"
    parts = [{k: v for k, v in s.items() if v is not None} for s in summaries]
    return {
        "method": "union",
        "variant": variant,
        "rank": bottleneck["rank"] if bottleneck else None,
        "architecture": "union",
        "parts": parts,
        "non_linearity": bottleneck["non_linearity"] if bottleneck else None,
        "placement": bottleneck["placement"] if bottleneck else None,
    }


def _head(folder: Path) -> dict[str, Any] | None:
    """The prediction head saved beside the adapter (``with_head``, the default), listed
    apart: its type, files and parameters (not part of the adapter's count)."""
    if not (folder / HEAD_CONFIG).is_file():
        return None
    head_config = load_config_file(folder / HEAD_CONFIG)
    block = head_config.get("config")
    block = block if isinstance(block, dict) else {}
    head: dict[str, Any] = {
        "name": head_config.get("name"),
        # No config: the model class's own head (a LlamaForCausalLM's lm_head), which
        # save_adapter writes beside the adapter of a model without flexible heads.
        "head_type": block.get("head_type") or "static",
        "num_labels": block.get("num_labels"),
        "files": [HEAD_CONFIG],
    }
    if (folder / HEAD_WEIGHTS).is_file():
        tensors, _ = read_safetensors_header(folder / HEAD_WEIGHTS)
        head["files"].append(HEAD_WEIGHTS)
        head["params"] = sum(t.numel for t in tensors.values())
    return {k: v for k, v in head.items() if v is not None}


def load_config_file(path: Path) -> dict[str, Any]:
    """A JSON object file of the save, with an error naming it."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InvalidAdapter(
            f"{path.name} is not valid JSON ({type(error).__name__})", path=str(path)
        ) from None
    if not isinstance(data, dict):
        raise InvalidAdapter(f"{path.name} must hold a JSON object", path=str(path))
    return data
