"""Adapter folders as lists of weight edits on named base tensors.

An adapter becomes ``Edit`` objects, each naming one base tensor and how to change it (add a
LoRA delta, renormalise like DoRA, scale like IA3, replace like ``modules_to_save``). Merging an
ORDERED LIST of adapters applies each adapter's edits in turn to the running weight, which is
what a stack of adapters means; a single adapter is a list of one.

Every edit is shape-checked against the base's safetensors headers before anything is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compose.deploy import deltas
from compose.deploy.base import LM_HEAD, BaseFolder
from compose.deploy.stio import read_header, read_tensor
from compose.peft_config import merge_refusal
from compose.peft_patterns import adalora_scaling, module_matches
from schemas.errors import IncompatibleAdapters, InvalidAdapter
from schemas.methods import METHODS

if TYPE_CHECKING:
    from torch import Tensor

PREFIX = "base_model.model."
# The methods this module turns into edits (the streamed merge): one fact, in schemas.methods.
MERGEABLE = tuple(m for m, row in METHODS.items() if row.merge == "streamed")
# method -> the key suffixes that carry its factors (everything else is modules_to_save).
_FACTOR_SUFFIXES: dict[str, tuple[str, ...]] = {
    "lora": (
        "lora_A.weight",
        "lora_B.weight",
        "lora_B.bias",
        "lora_embedding_A",
        "lora_embedding_B",
        "lora_magnitude_vector",
        "lora_magnitude_vector.weight",
    ),
    "adalora": ("lora_A", "lora_B", "lora_E"),
    "ia3": ("ia3_l",),
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
    "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
    "vera": ("vera_lambda_b", "vera_lambda_d"),
}


KIND_NAMES: dict[str, str] = {
    "replace": "modules_to_save",
    "embedding-lora": "embedding LoRA",
    "bias": "a LoRA bias (lora_bias)",
    "trained-bias": "a trained bias (bias='all'/'lora_only')",
}
"""How messages name an ``Edit.kind`` that a format cannot express (default: the kind)."""


@dataclass
class LoraFactors:
    """A plain LoRA edit, kept factored for formats that ship the adapter (gguf-lora, vLLM)."""

    a: Tensor
    b: Tensor
    scale: float
    embedding: bool = False


@dataclass
class Edit:
    """One change to one base tensor."""

    target: str
    """Base tensor name, e.g. ``model.layers.0.self_attn.q_proj.weight``."""
    module: str
    kind: str
    """``lora``, ``dora``, ``embedding-lora``, ``ia3``, ``loha``, ``lokr``, ``adalora``,
    ``vera``, ``bias`` (lora_bias), ``trained-bias`` (``bias="all"``/``"lora_only"``: replaces
    the base's) or ``replace`` (modules_to_save)."""
    apply: Callable[[Tensor], Tensor]
    """fp32 weight -> new fp32 weight."""
    lora: LoraFactors | None = None
    rows: Callable[[Tensor, slice], Tensor] | None = None
    """The same edit on a block of the weight's rows (fp32, changed in place where it can be),
    or None when the edit needs the whole weight (DoRA on a transposed layer, LoHa...). Merging
    block by block keeps the fp32 working set small and in cache (see ``merged.py``)."""


@dataclass
class Adapter:
    """An adapter folder read for deploy: its config and its edits."""

    path: Path
    label: str
    """How it is named in messages and model cards (``ns/name@commit`` or the folder)."""
    config: dict[str, Any]
    method: str
    edits: list[Edit] = field(default_factory=list)

    @property
    def targets(self) -> set[str]:
        return {edit.target for edit in self.edits}


def _pattern(patterns: dict[str, Any] | None, module: str, default: Any) -> Any:
    """PEFT's ``get_pattern_key``: the first pattern matching the end of the module name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _group(
    tensors: dict[str, Tensor], method: str
) -> tuple[dict[str, dict[str, Tensor]], dict[str, Tensor]]:
    """(module -> {factor suffix: tensor}, modules_to_save tensor name -> tensor)."""
    suffixes = sorted(_FACTOR_SUFFIXES[method], key=len, reverse=True)
    modules: dict[str, dict[str, Tensor]] = {}
    saved: dict[str, Tensor] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(PREFIX)
        if name in ("base_model.vera_A", "base_model.vera_B"):
            continue  # VeRA's shared projections, read by the VeRA builder
        if name.endswith(".base_layer.weight"):
            continue  # PEFT's copy of the (unchanged) base embedding: nothing to merge
        if name.endswith(".base_layer.bias"):
            # An adapted module's own bias, trained (bias="all"/"lora_only"): it replaces the
            # base's. (Replacing an unchanged copy would be exact too.)
            name = name.removesuffix(".base_layer.bias") + ".bias"
        for suffix in suffixes:
            if name.endswith("." + suffix):
                modules.setdefault(name[: -len(suffix) - 1], {})[suffix] = tensor
                break
        else:
            if ".modules_to_save." in name:
                name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)
            saved[name] = tensor
    return modules, saved


def load_adapter(folder: str | Path, base: BaseFolder, label: str | None = None) -> Adapter:
    """Read an adapter folder and turn it into shape-checked edits on ``base``.

    Raises:
        InvalidAdapter: missing/malformed config or weights.
        IncompatibleAdapters: the method cannot be merged, the config says merging would be
            wrong (``compose.peft_config.merge_refusal``: aLoRA, a base-changing init, an
            unknown field that is on), a module is missing from the base, or a factor's shape
            contradicts the base tensor (message names both).
    """
    import torch

    path = Path(folder)
    label = label or str(path)
    config_path = path / "adapter_config.json"
    weights = path / "adapter_model.safetensors"
    if not config_path.is_file():
        raise InvalidAdapter(f"adapter {label}: no adapter_config.json in {path}")
    if not weights.is_file():
        raise InvalidAdapter(
            f"adapter {label}: no adapter_model.safetensors in {path}"
            " (convert .bin with `hub convert`)"
        )
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:
        raise InvalidAdapter(f"adapter {label}: invalid adapter_config.json ({error})") from error
    method = str(config.get("peft_type", "")).lower()
    if method not in MERGEABLE:
        raise IncompatibleAdapters(
            f"adapter {label}: method {method or '?'} cannot be merged into weights"
            f" (mergeable: {', '.join(MERGEABLE)}; prompt-learning adapters need the PEFT runtime)",
            adapter=label,
        )
    refusal = merge_refusal(config)
    if refusal is not None:
        raise IncompatibleAdapters(f"adapter {label} {refusal}", adapter=label)
    _check_architecture(config, base, label)
    headers, _ = read_header(weights)
    tensors = {name: read_tensor(info).to(torch.float32) for name, info in headers.items()}
    adapter = Adapter(path, label, config, method)
    modules, saved = _group(tensors, method)
    # Replacements first: a trained bias is the value a LoRA bias (lora_bias) then adds to.
    for name, tensor in sorted(saved.items()):
        module, _, param = name.rpartition(".")
        target = base.resolve(module, param)
        trained_bias = param == "bias" and not module_matches(
            module, config.get("modules_to_save") or []
        )
        what = f"bias={config.get('bias')!r}" if trained_bias else "modules_to_save"
        if target is None:
            raise IncompatibleAdapters(
                f"adapter {label}: tensor {name} ({what}) has no counterpart in the base",
                adapter=label,
                module=name,
            )
        _check_shape(label, name, base.shape(target), tuple(tensor.shape))
        adapter.edits.append(
            Edit(
                target,
                module,
                "trained-bias" if trained_bias else "replace",
                _replacement(tensor),
                rows=_replacement_rows(tensor),
            )
        )
    builder = _BUILDERS[method]
    for module, factors in sorted(modules.items()):
        adapter.edits.extend(builder(module, factors, config, base, label, tensors))
    return adapter


def _replacement(tensor: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda _weight: tensor.clone()


def _replacement_rows(tensor: Tensor) -> Callable[[Tensor, slice], Tensor]:
    return lambda block, rows: block.copy_(tensor[rows])


def _check_architecture(config: dict[str, Any], base: BaseFolder, label: str) -> None:
    expected = (config.get("auto_mapping") or {}).get("base_model_class")
    archs = base.config.get("architectures") or []
    if expected and archs and expected not in archs:
        raise IncompatibleAdapters(
            f"adapter {label} was trained on a {expected}, but the base {base.path} is a"
            f" {archs[0]} (give the base model the adapter was trained on)",
            adapter=label,
            expected=expected,
            got=archs[0],
        )


def _check_shape(label: str, module: str, expected: tuple[int, ...], got: tuple[int, ...]) -> None:
    if tuple(expected) != tuple(got):
        raise IncompatibleAdapters(
            f"adapter {label}: module {module} changes a {list(got)} weight but the base's is"
            f" {list(expected)} (the base does not match the adapter)",
            adapter=label,
            module=module,
            expected=list(expected),
            got=list(got),
        )


def _target(base: BaseFolder, module: str, label: str, param: str = "weight") -> str:
    target = base.resolve(module, param)
    if target is None:
        raise IncompatibleAdapters(
            f"adapter {label}: module {module} is not in the base {base.path}"
            " (the base does not match the adapter)",
            adapter=label,
            module=module,
        )
    return target


def _need(factors: dict[str, Tensor], names: tuple[str, ...], module: str, label: str) -> None:
    missing = [n for n in names if n not in factors]
    if missing:
        raise InvalidAdapter(f"adapter {label}: module {module} lacks {', '.join(missing)}")


def _lora_edits(
    module: str, f: dict[str, Tensor], config: dict[str, Any], base: BaseFolder, label: str, _: Any
) -> list[Edit]:
    rank = int(_pattern(config.get("rank_pattern"), module, config.get("r", 8)))
    alpha = float(_pattern(config.get("alpha_pattern"), module, config.get("lora_alpha", rank)))
    scale = deltas.lora_scale(alpha, rank, rslora=bool(config.get("use_rslora")))
    fif = bool(config.get("fan_in_fan_out"))
    target = _target(base, module, label)
    shape = base.shape(target)
    if "lora_embedding_A" in f:
        _need(f, ("lora_embedding_A", "lora_embedding_B"), module, label)
        a, b = f["lora_embedding_A"], f["lora_embedding_B"]
        if "lora_magnitude_vector" in f or "lora_magnitude_vector.weight" in f:
            raise IncompatibleAdapters(
                f"adapter {label}: DoRA on embedding {module} is not supported for export",
                adapter=label,
                module=module,
            )
        _check_shape(label, module, shape, (a.shape[1], b.shape[0]))
        factors = LoraFactors(a, b, scale, embedding=True)
        return [
            Edit(
                target,
                module,
                "embedding-lora",
                lambda w: deltas.add_embedding_lora_(w, a, b, scale),
                factors,
                rows=lambda block, rows: deltas.add_embedding_lora_(block, a[:, rows], b, scale),
            )
        ]
    _need(f, ("lora_A.weight", "lora_B.weight"), module, label)
    a, b = f["lora_A.weight"], f["lora_B.weight"]
    if a.ndim != 2 or b.ndim != 2:
        raise IncompatibleAdapters(
            f"adapter {label}: module {module} is a convolution; only linear layers export",
            adapter=label,
            module=module,
        )
    dims = (b.shape[0], a.shape[1])
    _check_shape(label, module, shape, dims[::-1] if fif else dims)
    edits: list[Edit] = []
    magnitude = f.get("lora_magnitude_vector", f.get("lora_magnitude_vector.weight"))
    if magnitude is not None:
        mag = magnitude.reshape(-1)
        _check_shape(label, module + " (DoRA magnitude)", (dims[0],), tuple(mag.shape))
        edits.append(
            Edit(
                target,
                module,
                "dora",
                lambda w: deltas.dora_merge(w, a, b, scale, mag, fan_in_fan_out=fif),
                # The norm is per output row: row blocks are exact unless the layer is stored
                # transposed (then an output row is a column of the stored weight).
                rows=None
                if fif
                else lambda block, rows: deltas.dora_merge(block, a, b[rows], scale, mag[rows]),
            )
        )
    else:
        edits.append(
            Edit(
                target,
                module,
                "lora",
                lambda w: deltas.add_lora_(w, a, b, scale, fan_in_fan_out=fif),
                LoraFactors(a, b, scale),
                rows=(
                    (
                        lambda block, rows: deltas.add_lora_(
                            block, a[:, rows], b, scale, fan_in_fan_out=True
                        )
                    )
                    if fif
                    else (lambda block, rows: deltas.add_lora_(block, a, b[rows], scale))
                ),
            )
        )
    if "lora_B.bias" in f:
        bias = f["lora_B.bias"]
        bias_target = _target(base, module, label, "bias")
        _check_shape(label, module + ".bias", base.shape(bias_target), tuple(bias.shape))
        edits.append(
            Edit(
                bias_target,
                module,
                "bias",
                lambda w: w + bias * scale,
                rows=lambda block, rows: block.add_(bias[rows], alpha=scale),
            )
        )
    return edits


def _adalora_edits(
    module: str, f: dict[str, Tensor], config: dict[str, Any], base: BaseFolder, label: str, _: Any
) -> list[Edit]:
    _need(f, ("lora_A", "lora_B", "lora_E"), module, label)
    a, b, e = f["lora_A"], f["lora_B"], f["lora_E"]
    fif = bool(config.get("fan_in_fan_out"))
    scaling, ranknum = adalora_scaling(config, module)
    target = _target(base, module, label)
    dims = (b.shape[0], a.shape[1])
    _check_shape(label, module, base.shape(target), dims[::-1] if fif else dims)
    return [
        Edit(
            target,
            module,
            "adalora",
            lambda w: w + deltas.adalora_delta(a, b, e, scaling, ranknum, fan_in_fan_out=fif),
        )
    ]


def _ia3_edits(
    module: str, f: dict[str, Tensor], config: dict[str, Any], base: BaseFolder, label: str, _: Any
) -> list[Edit]:
    vector = f["ia3_l"]
    fif = bool(config.get("fan_in_fan_out"))
    target = _target(base, module, label)
    shape = base.shape(target)
    out_in = shape[::-1] if fif else shape
    feedforward = vector.shape[0] == 1 and out_in[0] != 1
    expected = (1, out_in[1]) if feedforward else (out_in[0], 1)
    _check_shape(label, module + " (IA3 vector)", expected, tuple(vector.shape))
    # The vector scales rows or columns of the stored weight (transposed for fan_in_fan_out).
    stored = vector.T if fif else vector
    scales_rows = stored.shape[0] != 1
    edits = [
        Edit(
            target,
            module,
            "ia3",
            lambda w: deltas.ia3_merge(w, vector, fan_in_fan_out=fif),
            rows=lambda block, rows: block.mul_(stored[rows] if scales_rows else stored),
        )
    ]
    bias_target = base.resolve(module, "bias")
    if not feedforward and bias_target is not None:
        flat = vector.reshape(-1)
        edits.append(
            Edit(
                bias_target,
                module,
                "ia3",
                lambda w: w * vector.reshape(w.shape),
                rows=lambda block, rows: block.mul_(flat[rows]),
            )
        )
    return edits


def _lycoris_rank_alpha(module: str, config: dict[str, Any]) -> float:
    rank = int(_pattern(config.get("rank_pattern"), module, config.get("r", 8)))
    alpha = float(_pattern(config.get("alpha_pattern"), module, config.get("alpha", rank)))
    return alpha / rank


def _loha_edits(
    module: str, f: dict[str, Tensor], config: dict[str, Any], base: BaseFolder, label: str, _: Any
) -> list[Edit]:
    if "hada_t1" in f or "hada_t2" in f:
        raise IncompatibleAdapters(
            f"adapter {label}: module {module} is a convolution; only linear layers export",
            adapter=label,
            module=module,
        )
    _need(f, ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"), module, label)
    w1a, w1b, w2a, w2b = (f[k] for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
    scale = _lycoris_rank_alpha(module, config)
    target = _target(base, module, label)
    _check_shape(label, module, base.shape(target), (w1a.shape[0], w1b.shape[1]))
    return [
        Edit(target, module, "loha", lambda w: w + deltas.loha_delta(w1a, w1b, w2a, w2b, scale))
    ]


def _lokr_edits(
    module: str, f: dict[str, Tensor], config: dict[str, Any], base: BaseFolder, label: str, _: Any
) -> list[Edit]:
    if "lokr_t2" in f:
        raise IncompatibleAdapters(
            f"adapter {label}: module {module} is a convolution; only linear layers export",
            adapter=label,
            module=module,
        )
    w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
    w2 = f["lokr_w2"] if "lokr_w2" in f else f["lokr_w2_a"] @ f["lokr_w2_b"]
    scale = _lycoris_rank_alpha(module, config)
    target = _target(base, module, label)
    shape = base.shape(target)
    _check_shape(label, module, shape, (w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]))
    return [Edit(target, module, "lokr", lambda w: w + deltas.lokr_delta(w1, w2, scale, shape))]


def _vera_edits(
    module: str,
    f: dict[str, Tensor],
    config: dict[str, Any],
    base: BaseFolder,
    label: str,
    tensors: dict[str, Tensor],
) -> list[Edit]:
    shared_a = tensors.get("base_model.vera_A")
    shared_b = tensors.get("base_model.vera_B")
    if shared_a is None or shared_b is None:
        raise IncompatibleAdapters(
            f"adapter {label}: VeRA projections were not saved (save_projection=False);"
            " they cannot be rebuilt outside PEFT",
            adapter=label,
        )
    _need(f, ("vera_lambda_b", "vera_lambda_d"), module, label)
    fif = bool(config.get("fan_in_fan_out"))
    target = _target(base, module, label)
    shape = base.shape(target)
    out_f, in_f = shape[::-1] if fif else shape
    lb, ld = f["vera_lambda_b"], f["vera_lambda_d"]
    _check_shape(label, module + " (VeRA lambda_b)", (out_f,), tuple(lb.shape))
    return [
        Edit(
            target,
            module,
            "vera",
            lambda w: (
                w + deltas.vera_delta(shared_a, shared_b, ld, lb, out_f, in_f, fan_in_fan_out=fif)
            ),
        )
    ]


_BUILDERS: dict[str, Callable[..., list[Edit]]] = {
    "lora": _lora_edits,
    "adalora": _adalora_edits,
    "ia3": _ia3_edits,
    "loha": _loha_edits,
    "lokr": _lokr_edits,
    "vera": _vera_edits,
}


def touches_embeddings(adapters: list[Adapter], base: BaseFolder) -> bool:
    """True when any adapter changes the input embedding or the output projection."""
    names = {base.embed_name, LM_HEAD}
    return any(edit.target in names for adapter in adapters for edit in adapter.edits)


def may_touch_embeddings(folders: list[Path], base: BaseFolder) -> bool:
    """Whether any adapter might change the embedding or ``lm_head``, from headers alone.

    Conservative (a tensor named after either module counts) and torch-free, so an export can
    decide before the adapters are loaded whether the base's layout survives a tied base.
    """
    leaves = {LM_HEAD.split(".")[0]}
    if base.embed_name is not None:
        leaves.add(base.embed_name.rsplit(".", 2)[-2])
    for folder in folders:
        weights = folder / "adapter_model.safetensors"
        if not weights.is_file():
            return True  # reported properly when the adapter is loaded
        names, _ = read_header(weights)
        if any(leaves & set(name.split(".")) for name in names):
            return True
    return False
