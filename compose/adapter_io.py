"""Reading adapters into per-module factors or dense deltas, and writing merged LoRAs.

The thin file layer around ``compose.merge``: tensors in, tensors out. Every LoRA detail that
changes the delta (rank/alpha patterns, rsLoRA) is resolved here, so the math only ever sees
``delta = B @ A``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compose.merge import Factors
from compose.peft_config import merge_refusal
from compose.peft_patterns import pattern_value
from schemas.errors import IncompatibleAdapters

if TYPE_CHECKING:
    import torch
    from torch import Tensor

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
_PREFIX = "base_model.model."


@dataclass
class ModuleLora:
    """One adapted module: its factors (scale folded into B) and what kind of layer it is."""

    factors: Factors
    embedding: bool = False


@dataclass
class LoadedAdapter:
    """An input of a composition: its reference, config and the tensors the operator needs."""

    label: str
    method: str
    config: dict[str, Any]
    dtype: torch.dtype
    modules: dict[str, ModuleLora] = field(default_factory=dict)
    dense: dict[str, Tensor] = field(default_factory=dict)
    vectors: dict[str, Tensor] = field(default_factory=dict)


def _load(folder: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    from safetensors.torch import load_file

    config = json.loads((folder / CONFIG).read_text())
    return config, load_file(str(folder / WEIGHTS))


def _modules(tensors: dict[str, Tensor], suffixes: tuple[str, ...]) -> dict[str, dict[str, Tensor]]:
    out: dict[str, dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(_PREFIX)
        for suffix in suffixes:
            if name.endswith("." + suffix):
                out.setdefault(name[: -len(suffix) - 1], {})[suffix] = tensor
                break
    return out


def _refuse(label: str, why: str, operator: str) -> IncompatibleAdapters:
    return IncompatibleAdapters(f"{label} {why}; `{operator}` cannot merge it", adapter=label)


def load_adapter(folder: Path, label: str, method: str, operator: str) -> LoadedAdapter:
    """Read an input adapter for ``operator`` (LoRA as factors, LoHa/LoKr as dense deltas,
    IA3 as scaling vectors). Refuses what would merge wrongly, naming the adapter."""
    config, tensors = _load(folder)
    dtypes = {t.dtype for t in tensors.values()}
    dtype = dtypes.pop() if len(dtypes) == 1 else _fp32()
    loaded = LoadedAdapter(label=label, method=method, config=config, dtype=dtype)
    refusal = merge_refusal(config)
    if refusal is not None:
        raise IncompatibleAdapters(f"{label} {refusal}", adapter=label)
    if config.get("modules_to_save"):
        raise _refuse(
            label,
            f"replaces whole modules ({', '.join(config['modules_to_save'])}: modules_to_save)",
            operator,
        )
    trained_biases = sorted(
        k for k in tensors if k.endswith(".bias") and not k.endswith("lora_B.bias")
    )
    if trained_biases:
        # They replace the base's biases; a weighted sum of replacements means nothing.
        module = trained_biases[0].removeprefix(_PREFIX).removesuffix(".bias")
        raise _refuse(
            label,
            f"trains the base model's biases (bias={config.get('bias')!r}:"
            f" {module.removesuffix('.base_layer')})",
            operator,
        )
    if method == "lora":
        if config.get("use_dora"):
            raise IncompatibleAdapters(
                f"{label} is a DoRA adapter: its weight is renormalised by the base weights'"
                f" norms, so it is not a plain delta and `{operator}` would merge it wrongly;"
                " use `hub compose stack` or export it merged instead",
                adapter=label,
            )
        if any(k.endswith("lora_B.bias") for k in tensors):
            raise _refuse(label, "trains LoRA biases (lora_bias)", operator)
        structure = _not_a_plain_delta(config)
        if structure is not None:
            raise IncompatibleAdapters(
                f"{label} {structure[0]}; `{operator}` cannot merge it ({structure[1]})",
                adapter=label,
            )
        loaded.modules = _lora_modules(config, tensors, label, operator)
    elif method in ("loha", "lokr"):
        loaded.dense = _lycoris_deltas(method, config, tensors, label, operator)
    elif method == "ia3":
        loaded.vectors = {
            module: next(iter(parts.values())).float()
            for module, parts in _modules(tensors, ("ia3_l.weight", "ia3_l")).items()
        }
    return loaded


def _not_a_plain_delta(config: dict[str, Any]) -> tuple[str, str] | None:
    """(why, what to do) when a LoRA config's tensors are not ``B @ A`` per module for the merge
    operators, else None. Export merges the first four right (it reads their structure); the
    operators only read lora_A / lora_B per module, which would drop or misplace the rest."""
    instead = "use `hub compose stack`, or export it merged"
    layers = config.get("layer_replication")
    if layers:
        return (
            f"uses layer_replication {layers}: PEFT builds more layers than the base has, each"
            " copy with its own LoRA",
            "serve it unmerged with PEFT",
        )
    tokens = config.get("trainable_token_indices")
    if tokens:
        return f"retrains token rows (trainable_token_indices={tokens}) beside its LoRA", instead
    if config.get("kasa_config"):
        return "is a KaSA LoRA (kasa_config): its lora_diag scales the rank components", instead
    if config.get("use_bdlora"):
        return "is a block-diagonal LoRA (use_bdlora): its factors are stored per block", instead
    targets = config.get("target_parameters")
    # Sorted: PEFT saves target_parameters from a set, in no fixed order.
    experts = sorted(
        t for t in targets or [] if isinstance(t, str) and t.rpartition(".")[2] != "weight"
    )
    if experts:
        return (
            f"adapts MoE expert parameters (target_parameters={experts}): its factors hold"
            " one delta per expert",
            instead,
        )
    return None


def _fp32() -> torch.dtype:
    import torch

    return torch.float32


def _lora_modules(
    config: dict[str, Any], tensors: dict[str, Tensor], label: str, operator: str
) -> dict[str, ModuleLora]:
    suffixes = ("lora_A.weight", "lora_B.weight", "lora_embedding_A", "lora_embedding_B")
    out: dict[str, ModuleLora] = {}
    for module, parts in sorted(_modules(tensors, suffixes).items()):
        embedding = "lora_embedding_A" in parts
        a = parts["lora_embedding_A" if embedding else "lora_A.weight"].float()
        b = parts["lora_embedding_B" if embedding else "lora_B.weight"].float()
        if a.dim() != 2:
            raise _refuse(label, f"adapts the convolution {module!r}", operator)
        rank = a.shape[0]
        alpha = float(
            pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", rank))
        )
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        out[module] = ModuleLora(Factors(A=a, B=b * scale), embedding=embedding)
    return out


def _lycoris_deltas(
    method: str, config: dict[str, Any], tensors: dict[str, Tensor], label: str, operator: str
) -> dict[str, Tensor]:
    import torch

    from compose.deploy.deltas import loha_delta

    suffixes = (
        ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
        if method == "loha"
        else ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
    )
    out: dict[str, Tensor] = {}
    for module, p in sorted(_modules(tensors, suffixes).items()):
        if "hada_t1" in p or "lokr_t2" in p:
            raise _refuse(label, f"adapts the convolution {module!r}", operator)
        rank = int(pattern_value(config.get("rank_pattern") or {}, module, config.get("r", 8)))
        alpha = float(
            pattern_value(config.get("alpha_pattern") or {}, module, config.get("alpha", rank))
        )
        scale = alpha / rank
        if method == "loha":
            p = {k: v.double() for k, v in p.items()}
            delta = loha_delta(
                p["hada_w1_a"], p["hada_w1_b"], p["hada_w2_a"], p["hada_w2_b"], scale
            )
        else:
            w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
            w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"] @ p["lokr_w2_b"]
            delta = torch.kron(w1.double(), w2.double()) * scale
        out[module] = delta.float()
    return out


def dense_deltas(adapter: LoadedAdapter) -> dict[str, Tensor]:
    """Each module's dense delta (LoRA: ``B @ A``; LoHa/LoKr: their products), fp32."""
    if adapter.method == "lora":
        return {
            m: (lora.factors.B.double() @ lora.factors.A.double()).float()
            for m, lora in adapter.modules.items()
        }
    return adapter.dense


def write_lora(
    dest: Path,
    modules: dict[str, ModuleLora],
    *,
    template: dict[str, Any],
    dtype: torch.dtype,
    readme: str,
) -> None:
    """Write ``modules`` as a PEFT LoRA folder that ``PeftModel.from_pretrained`` loads.

    Scales are already folded into B, so every module gets ``lora_alpha == r`` (scale 1); ranks
    that differ from the most common one go in ``rank_pattern``/``alpha_pattern``, keyed by the
    module's escaped full name. ``target_modules`` lists full module names, so exactly the
    merged modules are adapted. Tensors are rounded once, here, to ``dtype``.
    """
    from collections import Counter

    ranks = {m: lora.factors.rank for m, lora in modules.items()}
    common = Counter(ranks.values()).most_common(1)[0][0] if ranks else 1
    pattern = {re.escape(m): r for m, r in sorted(ranks.items()) if r != common}
    tensors: dict[str, Tensor] = {}
    for module, lora in sorted(modules.items()):
        a_key, b_key = (
            ("lora_embedding_A", "lora_embedding_B")
            if lora.embedding
            else ("lora_A.weight", "lora_B.weight")
        )
        tensors[f"{_PREFIX}{module}.{a_key}"] = lora.factors.A.to(dtype).contiguous()
        tensors[f"{_PREFIX}{module}.{b_key}"] = lora.factors.B.to(dtype).contiguous()
    config = {
        "peft_type": "LORA",
        "task_type": template.get("task_type"),
        "base_model_name_or_path": template.get("base_model_name_or_path"),
        "revision": template.get("revision"),
        "r": common,
        "lora_alpha": common,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": sorted(modules),
        "fan_in_fan_out": bool(template.get("fan_in_fan_out", False)),
        "use_rslora": False,
        "use_dora": False,
        "lora_dropout": 0.0,
        "bias": "none",
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    _write_folder(dest, tensors, config, readme)


def write_ia3(
    dest: Path,
    vectors: dict[str, Tensor],
    *,
    template: dict[str, Any],
    dtype: torch.dtype,
    readme: str,
) -> None:
    """Write merged IA3 scaling vectors with the first input's config."""
    tensors = {f"{_PREFIX}{m}.ia3_l": v.to(dtype).contiguous() for m, v in sorted(vectors.items())}
    config = {**template, "inference_mode": True}
    _write_folder(dest, tensors, config, readme)


def _write_folder(
    dest: Path, tensors: dict[str, Tensor], config: dict[str, Any], readme: str
) -> None:
    """An adapter folder as PEFT writes it: weights, config (sorted keys: deterministic bytes,
    so ``hub verify --rebuild`` can compare), README."""
    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest / WEIGHTS), metadata={"format": "pt"})
    (dest / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (dest / "README.md").write_text(readme)
