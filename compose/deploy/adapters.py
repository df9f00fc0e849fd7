"""Adapter folders as lists of weight edits on named base tensors.

An adapter becomes ``Edit`` objects, each naming one base tensor and how to change it (add a
LoRA delta, renormalise like DoRA, scale like IA3, replace like ``modules_to_save``). Merging an
ORDERED LIST of adapters applies each adapter's edits in turn to the running weight, which is
what a stack of adapters means; a single adapter is a list of one.

Every edit is shape-checked against the base's safetensors headers before anything is written.
``load_adapter`` reads the folder, groups its tensors by module and hands each module to its
method's builder (``compose.deploy.method_edits``); ``Edit`` is in ``compose.deploy.edits``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compose.deploy.base import LM_HEAD, BaseFolder
from compose.deploy.edits import Edit, check_shape, target_tensor
from compose.deploy.method_edits import BUILDERS
from compose.deploy.stio import read_header, read_tensor
from compose.peft_config import merge_refusal
from compose.peft_patterns import (
    LORA_VARIANT_STATE,
    TRAINABLE_TOKENS,
    base_weight_copy,
    module_matches,
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
        check_shape(label, name, base.shape(target), tuple(tensor.shape))
        adapter.edits.append(
            Edit(
                target,
                module,
                "trained-bias" if trained_bias else "replace",
                _replacement(tensor),
                rows=_replacement_rows(tensor),
            )
        )
    builder = BUILDERS[method]
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
        target = target_tensor(base, module, label, param)
        expected, got = base.shape(target), tuple(tensor.shape)
        if expected != got:
            if target not in (base.embed_name, LM_HEAD) or expected[1:] != got[1:]:
                check_shape(label, f"{module}.{param} (saved base weight)", expected, got)
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

    target = target_tensor(base, module, label)
    indices = token_indices(
        config.get("trainable_token_indices"), module, target == base.embed_name
    )
    shape = base.shape(target)
    if indices is None or len(indices) != rows.shape[0]:
        raise InvalidAdapter(
            f"adapter {label}: module {module} has {rows.shape[0]} trained token rows but"
            f" adapter_config.json's trainable_token_indices gives {indices!r} for it"
        )
    check_shape(label, module + " (trainable tokens)", (len(indices), shape[1]), rows.shape)
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
