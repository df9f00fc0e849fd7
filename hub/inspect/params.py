"""Base-model parameter counts, for ``params_fraction`` (no torch: headers and configs only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_LLAMA_FAMILY = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "mixtral"}


def base_param_count(base_model: Any, base_config: dict[str, Any] | None) -> int | None:
    """Exact count from a local base folder's safetensors headers; else from its config."""
    if isinstance(base_model, str) and base_model:
        folder = Path(base_model)
        try:
            is_dir = folder.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            count = _count_safetensors(folder)
            if count is not None:
                return count
            if base_config is None and (folder / "config.json").is_file():
                try:
                    base_config = json.loads((folder / "config.json").read_text())
                except (OSError, json.JSONDecodeError):
                    base_config = None
    return count_base_params(base_config) if base_config else None


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
    except InvalidAdapter:
        return None
    return total


def count_base_params(config: dict[str, Any]) -> int | None:
    """Parameters of a llama-family decoder from its ``config.json``; None if unknown.

    Embeddings + per layer (attention with grouped KV heads, gated MLP, two RMSNorms) + final
    norm + lm_head unless tied.

    Example:
        >>> count_base_params({"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
        ...     "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32})
        6738415616
    """
    if config.get("model_type") not in _LLAMA_FAMILY:
        return None
    try:
        vocab = int(config["vocab_size"])
        hidden = int(config["hidden_size"])
        inter = int(config["intermediate_size"])
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        return None
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    if config.get("attention_bias"):
        attention += heads * head_dim + 2 * kv_heads * head_dim + hidden
    if config.get("model_type") == "qwen2":
        attention += heads * head_dim + 2 * kv_heads * head_dim  # q/k/v biases
    mlp = 3 * hidden * inter
    per_layer = attention + mlp + 2 * hidden
    lm_head = 0 if config.get("tie_word_embeddings") else vocab * hidden
    return vocab * hidden + layers * per_layer + hidden + lm_head
