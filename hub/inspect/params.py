"""Base-model parameter counts, for ``params_fraction`` (no torch: headers and configs only)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# model_type -> whether the input and output embeddings are tied when config.json is silent
# (the config class's default in transformers).
_TIED_BY_DEFAULT: dict[str, bool] = {
    "llama": False,
    "mistral": False,
    "mixtral": False,
    "qwen2": False,
    "qwen3": False,
    "phi3": False,
    "gemma": True,
    "gemma2": True,
}


def base_param_count(
    base_model: Any,
    base_config: dict[str, Any] | None,
    base_dirs: Sequence[Path] | None = None,
) -> int | None:
    """The base model's parameter count, or None when it cannot be known without downloads.

    An explicit ``base_config`` is used first. Without one (or for an architecture
    ``count_base_params`` does not know), a local folder named by ``base_model`` is read: the
    sum over its safetensors headers (exact), else its ``config.json``.

    ``base_dirs`` limits which folders may be read: None (a local push) reads the folder the
    adapter names, wherever it is; otherwise (a server) only folders inside these, a hub id
    such as ``org/model`` being looked up under each of them. An uploaded adapter's config
    is untrusted, so it must not make a server read, or learn anything about, other paths.
    """
    if base_config:
        count = count_base_params(base_config)
        if count is not None:
            return count
    folder = _local_folder(base_model, base_dirs)
    if folder is None:
        return None
    count = _count_safetensors(folder)
    if count is not None:
        return count
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return count_base_params(config) if isinstance(config, dict) else None


def base_weight_shapes(
    base_model: Any, base_dirs: Sequence[Path] | None = None
) -> dict[str, tuple[int, ...]] | None:
    """Tensor name -> shape of the local base folder ``base_model`` names (its safetensors
    headers; the same folder rules as ``base_param_count``), or None when there is none.

    The ledger needs them where an adapter holds only one side of the weights it rewrites
    (IA3's vectors, OFT's rotations, VeRA's scalings).
    """
    from hub.inspect.safetensors_header import read_safetensors_header
    from schemas.errors import InvalidAdapter

    folder = _local_folder(base_model, base_dirs)
    files = sorted(folder.glob("*.safetensors")) if folder is not None else []
    if not files:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        for file in files:
            tensors, _ = read_safetensors_header(file)
            shapes.update({key: info.shape for key, info in tensors.items()})
    except (InvalidAdapter, OSError):
        return None
    return shapes


def _local_folder(base_model: Any, base_dirs: Sequence[Path] | None) -> Path | None:
    if not isinstance(base_model, str) or not base_model or "\x00" in base_model:
        return None
    try:
        if base_dirs is None:
            folder = Path(base_model)
            return folder if folder.is_dir() else None
        for root in base_dirs:
            inside = root.resolve()
            # Resolved, so that neither ``..`` nor a symlink leads out of the allowed folder.
            folder = (inside / base_model).resolve()
            if folder.is_relative_to(inside) and folder.is_dir():
                return folder
    except (OSError, ValueError):  # a hub id that is not a valid path on this OS
        return None
    return None


def _count_safetensors(folder: Path) -> int | None:
    from hub.inspect.safetensors_header import read_safetensors_header
    from schemas.errors import InvalidAdapter

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    try:
        for file in files:
            tensors, _ = read_safetensors_header(file)
            total += sum(t.numel for t in tensors.values())
    except (InvalidAdapter, OSError):
        return None
    return total


def count_base_params(config: dict[str, Any]) -> int | None:
    """Parameters of a llama-family decoder from its ``config.json``; None if unknown.

    Counts the input embeddings, per layer the attention (grouped KV heads, optional biases,
    Qwen3's q/k norms), the gated MLP (Mixtral: every expert plus the router) and the
    RMSNorms (Gemma2 has four per layer), the final norm, and ``lm_head`` unless tied.
    Known ``model_type``s: llama, mistral, mixtral, qwen2, qwen3, phi3, gemma, gemma2.

    Args:
        config: a Hugging Face ``config.json`` as a dict.

    Returns:
        The exact count for a known architecture, else None (never a guess).

    Example:
        >>> count_base_params({"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
        ...     "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32})
        6738415616
    """
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in _TIED_BY_DEFAULT:
        return None
    try:
        vocab = int(config["vocab_size"])
        hidden = int(config["hidden_size"])
        inter = int(config["intermediate_size"])
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        experts = int(config.get("num_local_experts") or 1)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    q_width, kv_width = heads * head_dim, kv_heads * head_dim
    attention = 2 * hidden * q_width + 2 * hidden * kv_width
    if model_type == "qwen2":
        attention += q_width + 2 * kv_width  # q/k/v always have biases
    elif config.get("attention_bias"):
        attention += q_width + 2 * kv_width + hidden
    if model_type == "qwen3":
        attention += 2 * head_dim  # RMSNorm on q and k per head
    mlp = 3 * hidden * inter
    if config.get("mlp_bias"):
        mlp += 2 * inter + hidden
    if model_type == "mixtral":
        mlp = experts * mlp + hidden * experts  # experts + router
    norms = (4 if model_type == "gemma2" else 2) * hidden
    tied = config.get("tie_word_embeddings")
    if tied is None:
        tied = _TIED_BY_DEFAULT[model_type]
    lm_head = 0 if tied else vocab * hidden
    return vocab * hidden + layers * (attention + mlp + norms) + hidden + lm_head
