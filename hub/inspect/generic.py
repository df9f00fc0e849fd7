"""The generic card of a PEFT type the hub does not read in full (``card="generic"`` rows of
``schemas.methods``): modules and shared tensors from the tensor names, counts from the
headers, the overhead class from PEFT's method family. Shapes are not checked against the
config (PEFT does that when it loads the adapter); the card says so in ``details``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hub.inspect.config import get_int
from hub.inspect.methods import PREFIX, WEIGHTS, Analysis
from hub.inspect.safetensors_header import TensorInfo, read_safetensors_header
from schemas.methods import Row

_SHARED_PREFIX = "base_model."


def analyse_generic(
    row: Row, config: dict[str, Any], tensors: dict[str, TensorInfo], folder: Path
) -> tuple[Analysis, set[str], int]:
    """(analysis, keys of frozen tensors, values in nested adapter files) of a generic type.

    A key ``base_model.model.<module>.<prefix>...`` belongs to ``<module>``; any other key under
    ``base_model.`` is a tensor shared by all modules (VB-LoRA's vector bank, RandLoRA's
    projections); prompt-learning types save top-level tables (``prompt_embeddings``).
    X-LoRA keeps its LoRAs in subfolders: their values are counted too.
    """
    modules: set[str] = set()
    shared: list[str] = []
    for key in tensors:
        module = _module_of(key, row.prefix)
        if module is not None:
            modules.add(module)
        elif key.startswith(_SHARED_PREFIX):
            shared.append(key)
    frozen = {key for key in tensors if any(part in key for part in row.frozen)}
    nested = _nested_values(folder) if row.method == "xlora" else 0
    tokens = 0
    if row.family == "prompt":
        tokens = get_int(config, "num_virtual_tokens", 0) or 0
    rank = config.get("r")
    targets = config.get("target_modules")
    if not modules and isinstance(targets, list) and all(isinstance(t, str) for t in targets):
        # Every tensor is shared (UniLoRA's one vector): the config says what it adapts.
        modules = set(targets)
    details: dict[str, Any] = {
        "card": "generic: modules and counts from the tensor names; shapes checked by PEFT"
        " when it loads the adapter",
        "family": row.family,
        "shared_tensors": sorted(shared),
    }
    if row.params_note:
        details["params_note"] = row.params_note
    if nested:
        details["nested_adapters"] = sorted(str(k) for k in (config.get("adapters") or {}))
    return (
        Analysis(
            rank=tokens or (rank if isinstance(rank, int) and not isinstance(rank, bool) else None),
            modules=sorted(modules),
            extra_tokens=tokens,
            details=details,
            nested_modules=_nested_modules(folder) if row.method == "xlora" else 0,
        ),
        frozen,
        nested,
    )


def _module_of(key: str, prefix: str | None) -> str | None:
    """The adapted module a per-module key belongs to: the path up to the first name part that
    starts with the type's tensor prefix (``...q_proj.fourierft_spectrum`` -> ``...q_proj``)."""
    if prefix is None or not key.startswith(PREFIX):
        return None
    parts = key.removeprefix(PREFIX).split(".")
    for i, part in enumerate(parts):
        if part.startswith(prefix) and i > 0:
            return ".".join(parts[:i])
    return None


def _nested_values(folder: Path) -> int:
    """Values in the adapter files of ``folder``'s subfolders (X-LoRA's LoRAs)."""
    total = 0
    for weights in sorted(folder.glob(f"*/{WEIGHTS}")):
        nested, _ = read_safetensors_header(weights)
        total += sum(t.numel for t in nested.values())
    return total


def _nested_modules(folder: Path) -> int:
    """LoRA layers of the first nested adapter (X-LoRA swaps each for a mixing layer)."""
    for weights in sorted(folder.glob(f"*/{WEIGHTS}")):
        nested, _ = read_safetensors_header(weights)
        return len({k.rsplit(".lora_A", 1)[0] for k in nested if ".lora_A" in k})
    return 0
