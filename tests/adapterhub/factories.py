"""Tiny bases and real AdapterHub adapters, built with ``adapters`` itself (no downloads).

``make_base`` saves a BERT-style (``BertModel``, loaded as adapters' own ``BertAdapterModel``,
which can carry a prediction head) or Llama-style (``LlamaForCausalLM``, loaded with
transformers and ``adapters.init``) model from a config. ``make_adapter`` adds an adapter
with ``add_adapter``, makes it trainable with ``train_adapter``, moves every trainable value
off its initialisation (most adapters start as the identity: zero up-projections, zero LoRA
B), saves it with ``save_adapter`` and returns the outputs of the model it saved from.

These need the ``adapters`` library (the ``.venv-adapterhub`` environment).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASES: dict[str, dict[str, Any]] = {
    "bert": dict(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
    ),
    "llama": dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    ),
}


def make_base(kind: str, out_dir: Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny base of ``kind`` (``bert`` or ``llama``)."""
    import torch
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if kind == "bert":
        model: Any = BertModel(BertConfig(**BASES["bert"]))
    else:
        model = LlamaForCausalLM(LlamaConfig(**BASES["llama"]))
    model.save_pretrained(out_dir)
    return Path(out_dir)


def load_base(path: Path) -> Any:
    """The base at ``path`` in fp32, eval mode: BERT as ``BertAdapterModel``, Llama plain."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if AutoConfig.from_pretrained(path).model_type == "bert":
        from adapters import BertAdapterModel

        return BertAdapterModel.from_pretrained(path, dtype="float32").eval()
    return AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()


def outputs(model: Any) -> Any:
    """The model's outputs on ``TOKENS``: logits, or BERT's last hidden state without a head."""
    import torch

    with torch.no_grad():
        out = model(torch.tensor(TOKENS))
    return out.logits if getattr(out, "logits", None) is not None else out[0]


def configs() -> dict[str, Any]:
    """Name -> adapters config for every kind the issue lists (sizes fit a 64-wide base)."""
    from adapters import (
        CompacterConfig,
        DoubleSeqBnConfig,
        IA3Config,
        LoRAConfig,
        MAMConfig,
        ParBnConfig,
        PrefixTuningConfig,
        SeqBnConfig,
        UniPELTConfig,
    )

    return {
        "houlsby": DoubleSeqBnConfig(reduction_factor=16),
        "pfeiffer": SeqBnConfig(reduction_factor=8),
        "parallel": ParBnConfig(reduction_factor=4),
        "compacter": CompacterConfig(reduction_factor=8),
        "prefix": PrefixTuningConfig(prefix_length=6, bottleneck_size=32),
        "lora": LoRAConfig(r=4, alpha=8),
        "ia3": IA3Config(),
        "mam": MAMConfig(),
        "unipelt": UniPELTConfig(),
    }


SAFETENSORS_REFUSED = frozenset({"prefix", "mam", "unipelt"})
"""adapters 1.3.0 cannot save these with use_safetensors=True: the prefix pool is shared by
every layer (safetensors refuses shared tensors). They are saved as pickles and converted
with ``hub convert`` (the route the refusal names)."""

TOKENS = [[2, 7, 11, 5, 9, 3, 17, 4], [1, 8, 12, 6, 10, 2, 13, 5]]


@dataclass
class Saved:
    folder: Path
    name: str
    trainable: int
    """adapters' own count: values of the parameters ``train_adapter`` leaves trainable."""
    logits: Any
    """The saving model's outputs on ``TOKENS`` with the adapter active (fp32)."""


def make_adapter(
    kind: str,
    base: Path,
    out_dir: Path,
    *,
    seed: int = 1,
    safetensors: bool | None = None,
    head: bool = False,
    config: Any = None,
) -> Saved:
    """Build and save adapter ``kind`` (a ``configs()`` key) on ``base``.

    Args:
        config: an adapters config in place of ``configs()[kind]`` (``kind`` still names it).
        safetensors: None: safetensors where adapters can write it, else its pickle.
        head: add a 3-label classification head of the adapter's name (BERT only), saved
            beside it and trained with it.
    """
    import adapters
    import torch

    model = load_base(base)
    if not isinstance(model, adapters.ModelAdaptersMixin):
        adapters.init(model)
    model.add_adapter(kind, config=config if config is not None else configs()[kind])
    if head:
        model.add_classification_head(kind, num_labels=3)
    model.train_adapter(kind)
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.2)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.eval()
    logits = outputs(model)
    use_safetensors = kind not in SAFETENSORS_REFUSED if safetensors is None else safetensors
    out_dir.mkdir(parents=True)
    model.save_adapter(str(out_dir), kind, use_safetensors=use_safetensors)
    return Saved(Path(out_dir), kind, trainable, logits)


def reload_logits(base: Path, folders: list[Path], *, stack: bool = False) -> Any:
    """Outputs on ``TOKENS`` of a fresh base with ``folders`` loaded by ``adapters``."""
    from compose.adapterhub import load_adapterhub

    return outputs(load_adapterhub(load_base(base), folders, stack=stack))
