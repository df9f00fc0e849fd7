"""Which modules an adapter's tensors belong to, and whether the config targets them.

Tensor keys are sorted by role (adapted module, ``modules_to_save``, shared frozen tensors,
trained biases); a key that fits none is refused. Then every adapted module is checked
against the config the way PEFT selects modules when it builds the adapter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from compose.peft_patterns import (
    EMBEDDING_LAYERS,
    TRAINABLE_TOKENS,
    base_weight_copy,
    token_indices,
)
from hub.inspect.config import CONFIG, get_names, matches
from hub.inspect.methods import PREFIX, SUFFIXES, WEIGHTS, TensorInfoGroups
from hub.inspect.safetensors_header import TensorInfo
from schemas.errors import InvalidAdapter


@dataclass
class Grouping:
    """An adapter's tensor keys sorted by role."""

    modules: TensorInfoGroups
    """Adapted module -> {tensor suffix: header entry}."""
    saved: list[str]
    """Modules saved whole (``modules_to_save``) or in part (trainable token rows)."""
    shared: set[str]
    """Keys of frozen tensors shared by all modules (VeRA's projections)."""
    biases: list[str]
    """Modules whose own bias was trained (``bias="all"``, ``"lora_only"``...)."""
    copies: dict[str, TensorInfo]
    """Keys of the embedding layers' base weights PEFT saved beside the adapter (frozen)."""


def group_by_module(
    method: str, config: dict[str, Any], tensors: dict[str, TensorInfo]
) -> Grouping:
    """Sort the tensor keys of a ``method`` adapter by role.

    Raises:
        InvalidAdapter: a tensor that is no ``method`` tensor, not in ``modules_to_save`` and
            not a bias the config says is trained; a trained bias outside the adapted modules
            when the config says ``bias="<method>_only"``.
    """
    suffixes = sorted(SUFFIXES[method], key=len, reverse=True)
    modules_to_save = get_names(config, "modules_to_save")
    bias_mode = config.get("bias")
    grouped: TensorInfoGroups = {}
    saved: set[str] = set()
    shared: set[str] = set()
    biases: set[str] = set()
    copies: dict[str, TensorInfo] = {}
    for key, info in tensors.items():
        if method == "vera" and key.split(".")[-1] in ("vera_A", "vera_B"):
            shared.add(key)
            continue
        name = key.removeprefix(PREFIX)
        suffix = next((s for s in suffixes if name.endswith("." + s)), None)
        if suffix is not None:
            grouped.setdefault(name[: -len(suffix) - 1], {})[suffix] = info
            continue
        if TRAINABLE_TOKENS in name:
            saved.add(_check_token_rows(config, name.split(TRAINABLE_TOKENS)[0], info))
            continue
        module = name.rsplit(".", 1)[0]
        if matches(module, modules_to_save, "modules_to_save"):
            saved.add(module)
            continue
        copy = base_weight_copy(name)
        if copy is not None:
            copies[key] = info
            if _tied_embedding(config, copy[0], modules_to_save):
                saved.add(copy[0])  # the trained tied copy (one parameter with the embedding's)
            continue
        if name.endswith(".bias") and isinstance(bias_mode, str) and bias_mode != "none":
            biases.add(module.removesuffix(".base_layer"))
            continue
        raise InvalidAdapter(
            f"{WEIGHTS}: tensor {key!r} is neither a {method} tensor nor part of a module in"
            f" modules_to_save ({CONFIG})",
            module=module,
        )
    if bias_mode not in (None, "none", "all"):
        # "lora_only", "boft_only"...: only the adapted modules' own biases are trained.
        stray = sorted(biases - set(grouped))
        if stray:
            raise InvalidAdapter(
                f"{WEIGHTS}: module {stray[0]!r} has a trained bias but no {method} weights,"
                f" while {CONFIG} says bias={bias_mode!r}",
                module=stray[0],
            )
    return Grouping(grouped, sorted(saved), shared, sorted(biases), copies)


def _check_token_rows(config: dict[str, Any], module: str, info: TensorInfo) -> str:
    """The trained token rows must be one per id in ``trainable_token_indices``."""
    indices = token_indices(config.get("trainable_token_indices"), module, True)
    if indices is None or not info.shape or info.shape[0] != len(indices):
        raise InvalidAdapter(
            f"{WEIGHTS}: module {module!r} has trained token rows of shape {info.shape} but"
            f" {CONFIG}'s trainable_token_indices gives {indices!r} for it",
            module=module,
        )
    return module


def check_targets(config: dict[str, Any], modules: list[str]) -> None:
    """Every adapted module must be one PEFT would have adapted with this config.

    Mirrors ``peft.tuners.tuners_utils.check_target_module_exists``: ``exclude_modules`` wins,
    then ``target_modules`` (names matched on the dotted suffix, a regex string matched in
    full, or ``all-linear``) or ``target_parameters``, then ``layers_to_transform``.

    Raises:
        InvalidAdapter: naming the first module the config does not select, and the field.
    """
    targets = get_names(config, "target_modules")
    parameters = get_names(config, "target_parameters")
    excluded = get_names(config, "exclude_modules")
    layers = _layers_to_transform(config)
    for module in modules:
        if excluded and matches(module, excluded, "exclude_modules"):
            raise InvalidAdapter(
                f"{WEIGHTS}: module {module!r} has adapter weights but is excluded by"
                f" exclude_modules {excluded!r} ({CONFIG})",
                module=module,
            )
        if targets is None and parameters is None:
            continue  # PEFT filled in per-architecture defaults: nothing to hold it against
        owner = re.sub(r"(\.base_layer)+$", "", module)
        covered = (
            matches(module, targets, "target_modules")
            or (
                isinstance(parameters, list)
                and any(
                    matches(owner, [p.rsplit(".", 1)[0]], "target_parameters") for p in parameters
                )
            )
            or _tied_embedding(config, module, targets)
        )
        if not covered:
            field, names = (
                ("target_modules", targets)
                if targets is not None
                else ("target_parameters", parameters)
            )
            raise InvalidAdapter(
                f"{WEIGHTS}: module {module!r} has adapter weights but is not in"
                f" {field} {names!r} ({CONFIG})",
                module=module,
            )
        if layers is not None and isinstance(targets, list):
            index = _layer_index(module, config)
            if index not in layers:
                where = "has no layer index" if index is None else f"is in layer {index}"
                raise InvalidAdapter(
                    f"{WEIGHTS}: module {module!r} has adapter weights but {where}, outside"
                    f" layers_to_transform {sorted(layers)} ({CONFIG})",
                    module=module,
                )


def _tied_embedding(config: dict[str, Any], module: str, targets: Any) -> bool:
    """With ``ensure_weight_tying``, PEFT gives the tied output layer the LoRA (or the trained
    copy) of a targeted embedding and saves it, while the config names only the embedding."""
    if not config.get("ensure_weight_tying") or module.rsplit(".", 1)[-1] not in EMBEDDING_LAYERS:
        return False
    names = [targets] if isinstance(targets, str) else list(targets or [])
    return any(name.rsplit(".", 1)[-1] in EMBEDDING_LAYERS for name in names)


def _layers_to_transform(config: dict[str, Any]) -> set[int] | None:
    value = config.get("layers_to_transform")
    if value is None or value == []:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return {value}
    if isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return set(value)
    raise InvalidAdapter(
        f"{CONFIG}: field 'layers_to_transform' must be an integer or a list of integers,"
        f" got {value!r}",
        field="layers_to_transform",
    )


def _layer_index(module: str, config: dict[str, Any]) -> int | None:
    """PEFT's rule: the first numbered path segment, or the one after ``layers_pattern``."""
    patterns = get_names(config, "layers_pattern")
    name = module + "."
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        match = None
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            try:
                match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
            except re.error as error:
                raise InvalidAdapter(
                    f"{CONFIG}: field 'layers_pattern' is not a valid regular expression ({error})",
                    field="layers_pattern",
                ) from None
            if match is not None:
                break
    return int(match.group("idx")) if match else None
