"""AdapterHub adapters: the format's facts and running them through the ``adapters`` library
itself (``adapters.init`` on a transformers model, ``load_adapter``, its ``Stack`` block),
never re-implemented. The one place for the format's facts (file names, config layout, tensor
names); ``hub.inspect.adapterhub`` builds the card from them, ``hub.formats.adapterhub``
refuses pickles.

The format: what ``adapters`` (formerly adapter-transformers) writes with
``model.save_adapter(dir, name)``.

A save holds:

- ``adapter_config.json``: ``{"config": {...}, "name", "model_type", "model_class",
  "model_name", "hidden_size", "version": "adapters.1.3.0"}``. ``config`` is the method's
  config: ``architecture`` is ``null`` / ``"bottleneck"`` for bottleneck adapters (Houlsby,
  Pfeiffer, parallel, Compacter: ``reduction_factor``, ``mh_adapter``, ``output_adapter``,
  ``is_parallel``, ``non_linearity``, ``original_ln_*``, ``phm_*``), ``"prefix_tuning"``,
  ``"lora"`` (``composition_mode: "add"``; IA3 is ``"scale"``) or ``"union"`` with a list of
  ``configs`` (MAM, UniPELT).
- the weights: ``adapter.safetensors`` with ``use_safetensors=True``, else the pickle
  ``pytorch_adapter.bin`` (the default of ``save_adapter`` in adapters 1.3.0). Keys are the
  model's own paths with the adapter's name inside: ``....adapters.<name>.adapter_down.0.weight``
  (bottleneck), ``....loras.<name>.lora_A`` (LoRA / IA3), ``prefix_tuning.prefix_tunings.<name>.``
  (prefix tuning: the pool, saved once more under every layer that uses it), ``....prefix_gates.
  <name>.`` and ``.gate.`` (UniPELT's gates), ``shared_parameters.<name>.`` (Compacter's shared
  PHM rule).
- an optional prediction head: ``head_config.json`` and ``model_head.safetensors`` (pickle:
  ``pytorch_model_head.bin``), keys ``heads.<name>.``.

``adapters`` 1.3.0 needs transformers 4.57; it is imported only inside the loading function,
so the rest of the hub runs without it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from schemas.errors import InvalidArgument

LIBRARY = "adapters"
"""The card's ``library`` for these adapters (PEFT's are ``peft``)."""
CONFIG = "adapter_config.json"
WEIGHTS = "adapter.safetensors"
PICKLE_WEIGHTS = "pytorch_adapter.bin"
HEAD_CONFIG = "head_config.json"
HEAD_WEIGHTS = "model_head.safetensors"
PICKLE_HEAD_WEIGHTS = "pytorch_model_head.bin"
PICKLE_TO_SAFETENSORS: dict[str, str] = {
    PICKLE_WEIGHTS: WEIGHTS,
    PICKLE_HEAD_WEIGHTS: HEAD_WEIGHTS,
}
"""The pickle files of a save and the safetensors file ``adapters`` reads in their place."""

SAVE_WITH_SAFETENSORS = "model.save_adapter(DIR, NAME, use_safetensors=True)"


def is_adapterhub_config(config: dict[str, Any]) -> bool:
    """Whether an ``adapter_config.json`` is AdapterHub's: a ``config`` object and the model
    fields ``save_adapter`` writes beside it, and no PEFT ``peft_type``."""
    return (
        "peft_type" not in config
        and isinstance(config.get("config"), dict)
        and "name" in config
        and ("model_type" in config or "model_class" in config or "version" in config)
    )


def is_adapterhub_folder(folder: Path) -> bool:
    """Whether ``folder`` holds an AdapterHub save (by its config, else by its weight files)."""
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    if isinstance(config, dict):
        return is_adapterhub_config(config)
    return (folder / WEIGHTS).is_file() or (folder / PICKLE_WEIGHTS).is_file()


def method_configs(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The method configs of a save: the ``config`` block, or each part of a union."""
    block = config.get("config")
    if not isinstance(block, dict):
        return []
    if block.get("architecture") == "union":
        parts = block.get("configs")
        return [c for c in parts if isinstance(c, dict)] if isinstance(parts, list) else []
    return [block]


def architecture(block: dict[str, Any]) -> str:
    """A method config's architecture; bottleneck configs leave it null."""
    arch = block.get("architecture")
    return arch if isinstance(arch, str) and arch else "bottleneck"


def uses_prefix_tuning(config: dict[str, Any]) -> bool:
    return any(architecture(c) == "prefix_tuning" for c in method_configs(config))


def _library() -> Any:
    try:
        import adapters
    except ImportError:
        raise InvalidArgument(
            "loading an AdapterHub adapter needs the `adapters` library (pip install"
            " adapters==1.3.0, which needs transformers 4.57): it runs through adapters' own"
            " load_adapter"
        ) from None
    return adapters


def load_adapterhub(base_model: Any, folders: Sequence[str | Path], *, stack: bool) -> Any:
    """``base_model`` with the AdapterHub saves ``folders`` loaded and active, in eval mode.

    Args:
        base_model: a transformers model of an architecture ``adapters`` supports.
        folders: one save, or the members of a stack in order.
        stack: activate the members as adapters' ``Stack`` block (each adapter's output is
            the next one's input, MAD-X's language adapter then task adapter); else the one
            adapter alone.

    Returns:
        The same model object, with ``adapters`` initialised on it (``adapters.init``).
    """
    adapters = _library()
    from adapters.composition import Stack

    if not isinstance(base_model, adapters.ModelAdaptersMixin):
        adapters.init(base_model)  # transformers' own load_adapter is PEFT's: replaced here
    names = [
        base_model.load_adapter(str(folder), load_as=f"hub_{i}", use_safetensors=True)
        for i, folder in enumerate(folders)
    ]
    base_model.set_active_adapters(Stack(*names) if stack and len(names) > 1 else names[0])
    return base_model.eval()


AVERAGED_NAME = "average"
"""The adapter name of an average's save (its ``adapter_config.json`` ``name``)."""
_AVERAGE_IGNORES = frozenset({"dropout", "init_weights"})
"""Config keys ``average_adapter`` itself lets differ between its inputs."""
_AVERAGE_STRATEGY = "linear"
"""adapters' only combine strategy for bottleneck adapters: a weighted sum of every tensor."""


def average_refusal(configs: Sequence[tuple[str, dict[str, Any]]]) -> str | None:
    """Why adapters' ``average_adapter`` cannot average these saves (``(ref, config)`` pairs
    of ``adapter_config.json``), or None.

    It averages adapters tensor by tensor (Compacter's shared PHM rule too), so every input
    must be a bottleneck of one config (same placement, reduction factor, non-linearity...;
    adapters ignores dropout and init_weights). LoRA is refused: adapters' linear average
    averages its A and B separately, which adds cross terms (merge PEFT LoRAs with `linear`);
    so are prefix tuning and unions, which the issue's `average` does not cover.
    """
    first_ref, first = configs[0]
    for ref, config in configs:
        blocks = method_configs(config)
        if len(blocks) != 1 or architecture(blocks[0]) != "bottleneck":
            kinds = "+".join(architecture(b) for b in blocks) or "no method"
            return (
                f"{ref} is an AdapterHub {kinds} adapter; `average` averages AdapterHub"
                " bottleneck adapters (adapters' average_adapter, a weighted sum of their"
                " tensors)"
            )
        other = method_configs(first)[0]
        for key in sorted((set(blocks[0]) | set(other)) - _AVERAGE_IGNORES):
            if blocks[0].get(key) != other.get(key):
                return (
                    f"{ref} has {key}={blocks[0].get(key)!r} but {first_ref}"
                    f" {key}={other.get(key)!r}: average_adapter averages adapters of one"
                    " config, tensor by tensor"
                )
        if config.get("model_class") != first.get("model_class"):
            return (
                f"{ref} was saved from a {config.get('model_class')} but {first_ref} from a"
                f" {first.get('model_class')}: their tensors have different names"
            )
    return None


def _skeleton(base: str, model_class: str) -> Any:
    """The model ``adapters`` averages in: ``model_class`` built from the base's config on
    the meta device (its weights are never read: an average touches adapter tensors only,
    which ``adapters`` creates on the CPU when it loads them)."""
    import torch
    import transformers

    adapters = _library()
    try:
        config = transformers.AutoConfig.from_pretrained(base)
    except (OSError, ValueError) as error:
        raise InvalidArgument(
            f"`average` builds the model adapters averages in from the base's config: base"
            f" {base!r} gives none ({type(error).__name__}); push the adapters with the base"
            " folder readable where the registry runs"
        ) from None
    cls = getattr(adapters, model_class, None) or getattr(transformers, model_class, None)
    if cls is None:
        raise InvalidArgument(
            f"`average`: neither adapters nor transformers has the model class {model_class!r}"
            " the adapters were saved from"
        )
    with torch.device("meta"):
        model = cls(config)
    if not isinstance(model, adapters.ModelAdaptersMixin):
        adapters.init(model)
    return model


def average_adapterhub(
    base: str, folders: Sequence[Path], weights: Sequence[float], dest: Path
) -> Path:
    """Average the bottleneck saves ``folders`` with adapters' own ``average_adapter`` and
    save the result, an ordinary AdapterHub save, at ``dest``.

    Args:
        base: the base model (folder or cached name) whose config the model is built from.
        folders: the saves, checked by ``average_refusal`` first.
        weights: one per save, used as given (``normalize_weights=False``): the result's
            tensors are ``sum_i w_i theta_i`` (uniform 1/N is the plain average; a negative
            weight subtracts, as in task arithmetic).

    Returns:
        ``dest``, holding ``adapter_config.json`` and ``adapter.safetensors`` (no head).

    Raises:
        InvalidArgument: ``adapters`` missing, the base's config unreadable.
    """
    configs = [json.loads((Path(f) / CONFIG).read_text(encoding="utf-8")) for f in folders]
    model = _skeleton(base, str(configs[0].get("model_class")))
    names = [
        model.load_adapter(str(folder), load_as=f"hub_{i}", with_head=False, use_safetensors=True)
        for i, folder in enumerate(folders)
    ]
    model.average_adapter(
        AVERAGED_NAME,
        names,
        weights=list(weights),
        normalize_weights=False,
        combine_strategy=_AVERAGE_STRATEGY,
    )
    model.save_adapter(str(dest), AVERAGED_NAME, with_head=False, use_safetensors=True)
    return dest
