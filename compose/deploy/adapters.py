"""Adapter folders as lists of weight edits on named base tensors.

An adapter becomes ``Edit`` objects, each naming one base tensor and how to change it (add a
LoRA delta, renormalise like DoRA, scale like IA3, replace like ``modules_to_save``). Merging an
ORDERED LIST of adapters applies each adapter's edits in turn to the running weight, which is
what a stack of adapters means; a single adapter is a list of one.

Every edit is shape-checked against the base's safetensors headers before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compose.deploy import deltas
from compose.deploy.base import LM_HEAD, BaseFolder
from compose.deploy.experts import Part, expert_delta, memory_map, parameter_shape
from compose.deploy.stio import read_header, read_tensor
from compose.peft_config import merge_refusal
from compose.peft_patterns import (
    LORA_VARIANT_STATE,
    TRAINABLE_TOKENS,
    adalora_scaling,
    base_weight_copy,
    block_diagonal_factor,
    lora_variant,
    module_matches,
    parameter_targets,
    token_indices,
)
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
        # KaSA's lora_diag is merged; VeLoRA's and MonteCLoRA's state only acts in training.
        *(name for names in LORA_VARIANT_STATE.values() for name in names),
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
    the base's), ``replace`` (modules_to_save, saved embedding weights), ``tokens`` (trainable
    token rows), ``parameter-lora`` / ``expert-lora`` (``target_parameters``), or a LoRA
    variant's name (``bdlora``, ``kasa``...): the formats that ship plain LoRA factors
    (gguf-lora, vLLM) accept ``lora`` only."""
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
    resized: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Base tensor -> its new shape, where the adapter was trained on a resized vocabulary."""

    @property
    def targets(self) -> set[str]:
        return {edit.target for edit in self.edits}


def _pattern(patterns: dict[str, Any] | None, module: str, default: Any) -> Any:
    """PEFT's ``get_pattern_key``: the first pattern matching the end of the module name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


@dataclass
class _Grouped:
    """An adapter file's tensors by role."""

    modules: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    """Adapted module -> {factor suffix: tensor}."""
    saved: dict[str, Tensor] = field(default_factory=dict)
    """modules_to_save tensor name -> tensor."""
    copies: dict[tuple[str, str], Tensor] = field(default_factory=dict)
    """(module, param) -> the base weight of an embedding layer PEFT saved."""
    tokens: dict[str, Tensor] = field(default_factory=dict)
    """Embedding module -> its trained token rows (``trainable_token_indices``)."""


def _group(tensors: dict[str, Tensor], method: str, modules_to_save: Any = None) -> _Grouped:
    """Sort an adapter file's tensors by role."""
    from compose.peft_patterns import module_matches

    suffixes = sorted(_FACTOR_SUFFIXES[method], key=len, reverse=True)
    out = _Grouped()
    modules, saved = out.modules, out.saved
    for key, tensor in tensors.items():
        name = key.removeprefix(PREFIX)
        if name in ("base_model.vera_A", "base_model.vera_B"):
            continue  # VeRA's shared projections, read by the VeRA builder
        if name.endswith(TRAINABLE_TOKENS):
            out.tokens[name.removesuffix(TRAINABLE_TOKENS)] = tensor
            continue
        copy = base_weight_copy(name)
        if copy is not None and not module_matches(copy[0], modules_to_save):
            out.copies[copy] = tensor
            continue
        if name.endswith(".base_layer.weight"):
            continue  # PEFT's copy of an (unchanged) base tensor: nothing to merge
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
    return out


def load_adapter(
    folder: str | Path, base: BaseFolder, label: str | None = None, *, device: str = "cpu"
) -> Adapter:
    """Read an adapter folder and turn it into shape-checked edits on ``base``.

    The factors are widened to fp32 and moved to ``device`` once, here, so every edit's
    closure holds tensors where the merge runs (``MergePlan.device``).

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
    _check_layer_replication(config, base, label)
    headers, _ = read_header(weights)
    tensors = {
        name: read_tensor(info).to(device=device, dtype=torch.float32)
        for name, info in headers.items()
    }
    adapter = Adapter(path, label, config, method)
    grouped = _group(tensors, method, config.get("modules_to_save"))
    if grouped.copies:
        # Loaded over the base's weights before anything else, as PeftModel.from_pretrained does.
        adapter.edits.extend(_copy_edits(grouped.copies, base, label, adapter.resized))
        base = dataclasses.replace(base, resized={**base.resized, **adapter.resized})
    # Replacements first: a trained bias is the value a LoRA bias (lora_bias) then adds to.
    for name, tensor in sorted(grouped.saved.items()):
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
    for module, factors in sorted(grouped.modules.items()):
        adapter.edits.extend(builder(module, factors, config, base, label, tensors))
    for module, rows in sorted(grouped.tokens.items()):
        adapter.edits.extend(_token_edits(module, rows, config, base, label))
    return adapter


def _copy_edits(
    copies: dict[tuple[str, str], Tensor],
    base: BaseFolder,
    label: str,
    resized: dict[str, tuple[int, ...]],
) -> list[Edit]:
    """Replace the embedding layers' base weights with the copies PEFT saved (``resized``
    gets the tensors whose vocabulary rows changed)."""
    targets = {}
    for (module, param), tensor in sorted(copies.items()):
        target = _target(base, module, label, param)
        expected, got = base.shape(target), tuple(tensor.shape)
        if expected != got:
            if target not in (base.embed_name, LM_HEAD) or expected[1:] != got[1:]:
                _check_shape(label, f"{module}.{param} (saved base weight)", expected, got)
            resized[target] = got
        targets[target] = (module, tensor)
    if base.tied and base.embed_name in targets and LM_HEAD not in targets:
        # The tied output layer is the saved embedding weight too (untied on export).
        targets[LM_HEAD] = ("lm_head", targets[base.embed_name][1])
        if base.embed_name in resized:
            resized[LM_HEAD] = resized[base.embed_name]
    return [
        Edit(
            target,
            module,
            "replace",
            _replacement(tensor),
            rows=None if target in resized else _replacement_rows(tensor),
        )
        for target, (module, tensor) in targets.items()
    ]


def _token_edits(
    module: str, rows: Tensor, config: dict[str, Any], base: BaseFolder, label: str
) -> list[Edit]:
    """``trainable_token_indices``: the trained rows replace the embedding's rows of those
    token ids (PEFT's ``TrainableTokensLayer.merge``). On a tied base PEFT ties the output
    layer to the same rows, so lm_head takes them too."""
    import torch

    target = _target(base, module, label)
    indices = token_indices(
        config.get("trainable_token_indices"), module, target == base.embed_name
    )
    shape = base.shape(target)
    if indices is None or len(indices) != rows.shape[0]:
        raise InvalidAdapter(
            f"adapter {label}: module {module} has {rows.shape[0]} trained token rows but"
            f" adapter_config.json's trainable_token_indices gives {indices!r} for it"
        )
    _check_shape(label, module + " (trainable tokens)", (len(indices), shape[1]), rows.shape)
    if not all(isinstance(i, int) and 0 <= i < shape[0] for i in indices):
        raise InvalidAdapter(
            f"adapter {label}: trainable_token_indices {indices} for {module} are not all token"
            f" ids below the vocabulary size {shape[0]}"
        )
    ids = torch.tensor(indices, device=rows.device)
    edit = Edit(
        target,
        module,
        "tokens",
        lambda w: w.index_copy_(0, ids, rows),
        rows=lambda block, span: _copy_token_rows(block, span, ids, rows),
    )
    targets = [target]
    if base.tied and target == base.embed_name:
        targets.append(LM_HEAD)
    return [dataclasses.replace(edit, target=t) for t in targets]


def _copy_token_rows(block: Tensor, span: slice, ids: Tensor, rows: Tensor) -> Tensor:
    inside = (ids >= span.start) & (ids < span.stop)
    block[ids[inside] - span.start] = rows[inside]
    return block


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


def _check_layer_replication(config: dict[str, Any], base: BaseFolder, label: str) -> None:
    """``layer_replication`` builds a deeper model than the base (copied layers share the base
    weights, each with its own LoRA): no merge into the base's layers can hold it."""
    ranges = config.get("layer_replication")
    if not ranges:
        return
    try:
        layers = sum(int(end) - int(start) for start, end in ranges)
    except (TypeError, ValueError):
        layers = None
    built = f"a {layers}-layer model" if layers else "a deeper model"
    depth = base.text_config().get("num_hidden_layers")
    raise IncompatibleAdapters(
        f"adapter {label} uses layer_replication {ranges}: PEFT builds {built} from the base's"
        f" {depth or '?'} layers, each copy with its own LoRA, which a merge into the base's"
        " layers cannot hold; serve the adapter unmerged with PEFT",
        adapter=label,
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
        # A module transformers renames when it loads (Mixtral's block_sparse_moe -> mlp).
        parts = memory_map(base).get(f"{module}.{param}")
        if parts is not None and len(parts) == 1 and parts[0].expert is None:
            return parts[0].name
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
    if parameter_targets(module, config.get("target_parameters")):
        return _parameter_edits(module, f, config, base, label, rank, scale)
    fif = bool(config.get("fan_in_fan_out"))
    target = _target(base, module, label)
    shape = base.shape(target)
    if "lora_embedding_A" in f:
        _need(f, ("lora_embedding_A", "lora_embedding_B"), module, label)
        a, b = f["lora_embedding_A"], f["lora_embedding_B"]
        _check_shape(label, module, shape, (a.shape[1], b.shape[0]))
        magnitude = f.get("lora_magnitude_vector", f.get("lora_magnitude_vector.weight"))
        if magnitude is not None:
            # PEFT's DoraEmbeddingVariant: the embedding is DoRA on a fan_in_fan_out layer
            # (one magnitude per embedding dimension, the norm taken over the vocabulary).
            mag = magnitude.reshape(-1)
            _check_shape(label, module + " (DoRA magnitude)", (shape[1],), tuple(mag.shape))
            merge = lambda w: deltas.dora_merge(w, a, b, scale, mag, fan_in_fan_out=True)  # noqa: E731
            return [Edit(target, module, "dora", merge)]
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
    a, b = _block_diagonal(module, a, b, config.get("use_bdlora"))
    if "lora_diag" in f:
        return _kasa_edits(module, target, a, b * f["lora_diag"], scale, shape, fif, label)
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
                lora_variant(config) or "lora",  # a variant's folder is no plain LoRA
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
        bias_target = base.resolve(module, "bias")
        if bias_target is None:
            raise IncompatibleAdapters(
                f"adapter {label}: module {module} has a LoRA bias (lora_bias=true) but the"
                f" base's {module} has no bias to merge it into; a merged model would need a"
                " bias the architecture does not have: serve the adapter unmerged with PEFT",
                adapter=label,
                module=module,
            )
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


def _block_diagonal(module: str, a: Tensor, b: Tensor, bdlora: Any) -> tuple[Tensor, Tensor]:
    """BD-LoRA: the block-diagonal factor expanded (PEFT's ``weight_as_blockdiagonal_matrix``:
    the stored ``(rows, cols / n)`` weight cut into n row blocks along the diagonal)."""
    factor = block_diagonal_factor(module, bdlora)
    if factor is None:
        return a, b
    import torch

    blocks = int(bdlora.get("nblocks") or 1)
    expand = lambda w: torch.block_diag(*torch.chunk(w, blocks, dim=0))  # noqa: E731
    return (expand(a), b) if factor == "A" else (a, expand(b))


def _kasa_edits(
    module: str,
    target: str,
    a: Tensor,
    b: Tensor,
    scale: float,
    shape: tuple[int, ...],
    fan_in_fan_out: bool,
    label: str,
) -> list[Edit]:
    """KaSA: PEFT truncates the base weight to its rank ``k - r`` SVD approximation when it
    builds the layer (the r smallest singular components dropped), then adds
    ``scale * B diag(lora_diag) A`` (``b`` here already scaled by lora_diag)."""
    if fan_in_fan_out:
        raise IncompatibleAdapters(
            f"adapter {label}: module {module} is a KaSA layer stored transposed"
            " (fan_in_fan_out), which PEFT does not build",
            adapter=label,
            module=module,
        )
    _check_shape(label, module, shape, (b.shape[0], a.shape[1]))
    rank = a.shape[0]
    return [
        Edit(
            target,
            module,
            "kasa",
            lambda w: deltas.add_lora_(deltas.svd_truncated(w, rank), a, b, scale),
        )
    ]


def _parameter_edits(
    module: str,
    f: dict[str, Tensor],
    config: dict[str, Any],
    base: BaseFolder,
    label: str,
    rank: int,
    scale: float,
) -> list[Edit]:
    """LoRA on a parameter (``target_parameters``): a router's 2-D weight, or a 3-D expert
    stack whose per-expert deltas land on the base tensors each expert is stored in."""
    _need(f, ("lora_A.weight", "lora_B.weight"), module, label)
    a, b = f["lora_A.weight"], f["lora_B.weight"]
    if "lora_B.bias" in f or "lora_magnitude_vector" in f:
        raise IncompatibleAdapters(
            f"adapter {label}: module {module} is a parameter LoRA with a bias or DoRA, which"
            " PEFT's ParamWrapper does not have",
            adapter=label,
            module=module,
        )
    fitting, seen = [], []
    for name in parameter_targets(module, config.get("target_parameters")):
        parts = _parameter_parts(base, name)
        if parts is None:
            continue
        shape = parameter_shape(base, parts)
        seen.append(f"{name} {list(shape)}")
        if _fits(shape, a, b, rank):
            fitting.append((name, parts, shape))
    if len(fitting) != 1:
        found = "; ".join(seen) or "none of them is in the base"
        raise IncompatibleAdapters(
            f"adapter {label}: module {module} has lora_A {list(a.shape)} and lora_B"
            f" {list(b.shape)}, which fit {len(fitting)} of the parameters its"
            f" target_parameters names ({found}); the base does not match the adapter",
            adapter=label,
            module=module,
        )
    _, parts, shape = fitting[0]
    if len(shape) == 2:
        (part,) = parts
        return [
            Edit(
                part.name,
                module,
                "parameter-lora",
                lambda w: deltas.add_lora_(w, a, b, scale),
                LoraFactors(a, b, scale),
                rows=lambda block, rows: deltas.add_lora_(block, a, b[rows], scale),
            )
        ]
    if _square(shape):
        raise IncompatibleAdapters(
            f"adapter {label}: module {module}'s experts are square {list(shape)}: whether PEFT"
            " stored them transposed cannot be told from the shapes",
            adapter=label,
            module=module,
        )
    return [_expert_edit(part, module, a, b, scale, shape) for part in parts]


def _square(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3 and shape[1] == shape[2]


def _expert_edit(
    part: Part, module: str, a: Tensor, b: Tensor, scale: float, shape: tuple[int, ...]
) -> Edit:
    """Add one expert's delta (or the whole stack's, for a stack stored as one tensor)."""
    if part.expert is None:
        count = shape[0]
        return Edit(
            part.name,
            module,
            "expert-lora",
            lambda w: w.add_(
                _stack([expert_delta(a, b, scale, shape, e, slice(None)) for e in range(count)])
            ),
        )
    expert, rows = part.expert, part.rows

    def add_rows(block: Tensor, span: slice) -> Tensor:
        start = rows.start + span.start
        return block.add_(
            expert_delta(a, b, scale, shape, expert, slice(start, start + len(block)))
        )

    return Edit(
        part.name,
        module,
        "expert-lora",
        lambda w: w.add_(expert_delta(a, b, scale, shape, expert, rows)),
        rows=add_rows,
    )


def _stack(tensors: list[Tensor]) -> Tensor:
    import torch

    return torch.stack(tensors)


def _parameter_parts(base: BaseFolder, name: str) -> list[Part] | None:
    """Where the in-memory parameter ``name`` is in the base's files, if anywhere."""
    module, _, param = name.rpartition(".")
    target = base.resolve(module, param)
    if target is not None:
        return [Part(target, None, slice(0, base.shape(target)[0]))]
    return memory_map(base).get(name)


def _fits(shape: tuple[int, ...], a: Tensor, b: Tensor, rank: int) -> bool:
    """Whether LoRA factors of rank ``rank`` fit a parameter of ``shape`` as PEFT lays them
    out: ``(out, in)``, or ``(experts, out, in)`` / ``(experts, in, out)`` with r x experts."""
    if len(shape) == 2:
        return a.shape == (rank, shape[1]) and b.shape == (shape[0], rank)
    if len(shape) != 3 or a.shape[0] != rank * shape[0] or b.shape[1] != a.shape[0]:
        return False
    return (a.shape[1], b.shape[0]) in ((shape[2], shape[1]), (shape[1], shape[2]))


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


def resizes_vocabulary(folders: list[Path], base: BaseFolder) -> bool:
    """Whether any adapter folder carries an embedding weight whose shape differs from the
    base's (trained on a resized vocabulary), from headers alone."""
    for folder in folders:
        weights = folder / "adapter_model.safetensors"
        if not weights.is_file():
            continue  # reported properly when the adapter is loaded
        names, _ = read_header(weights)
        for name, info in names.items():
            copy = base_weight_copy(name.removeprefix(PREFIX))
            target = copy and base.resolve(*copy)
            if target and base.shape(target) != info.shape:
                return True
    return False


def check_resized_format(adapters: list[Adapter], base: BaseFolder, fmt: str) -> None:
    """Only a merged safetensors export writes a model whose vocabulary follows the adapter.

    Raises:
        IncompatibleAdapters: an adapter trained on a resized vocabulary, with another format.
    """
    for adapter in adapters:
        # The input embedding first: the layer users resize.
        for target, shape in sorted(adapter.resized.items(), key=lambda t: t[0] == LM_HEAD):
            if fmt != "safetensors":
                raise IncompatibleAdapters(
                    f"adapter {adapter.label} was trained on a resized vocabulary ({target} has"
                    f" {shape[0]} rows, the base's {base.shape(target)[0]}); --format {fmt}"
                    " cannot change the vocabulary: export --format safetensors",
                    adapter=adapter.label,
                    module=target,
                )
