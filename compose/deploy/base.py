"""The base model folder (Hugging Face layout), read from its headers only.

A base is ``config.json`` plus ``model.safetensors`` or ``model.safetensors.index.json`` and its
shards, with tokenizer and generation files beside them. Nothing here loads a weight.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compose.deploy.stio import TensorInfo, read_header
from schemas.errors import InvalidArgument

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")
LM_HEAD = "lm_head.weight"
# Files copied next to the weights: everything a loader needs except the weights themselves.
SIDE_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


@dataclass
class BaseFolder:
    """A base model read from its folder: config, shard layout and every tensor's header."""

    path: Path
    config: dict[str, Any]
    shards: list[str]
    """Shard file names, in the base's order."""
    tensors: dict[str, TensorInfo]
    """Every tensor of every shard, by name."""
    shard_of: dict[str, str]
    """Tensor name -> shard file name (the index's ``weight_map``)."""
    index_metadata: dict[str, Any] = field(default_factory=dict)
    indexed: bool = False
    shard_metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    """Shard file name -> its header's ``__metadata__``."""
    resized: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Tensor name -> the shape an adapter gives it (a vocabulary resized for training)."""

    @classmethod
    def open(cls, path: str | Path) -> BaseFolder:
        """Read ``config.json`` and the safetensors headers of a base folder.

        Raises:
            InvalidArgument: not a folder, no config, no safetensors weights (pickle-only).
        """
        folder = Path(path)
        if not folder.is_dir():
            raise InvalidArgument(f"base {folder}: not a folder (give a Hugging Face model folder)")
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise InvalidArgument(
                f"base {folder}: no config.json (not a Hugging Face model folder)"
            )
        try:
            config = json.loads(config_path.read_text())
        except ValueError as error:
            raise InvalidArgument(f"base {config_path}: invalid JSON ({error})") from error
        index_path = folder / INDEX_NAME
        index_metadata: dict[str, Any] = {}
        if index_path.is_file():
            index = json.loads(index_path.read_text())
            weight_map: dict[str, str] = index["weight_map"]
            index_metadata = index.get("metadata", {})
            shards = list(dict.fromkeys(weight_map.values()))
            indexed = True
        elif (folder / SINGLE_NAME).is_file():
            shards, indexed = [SINGLE_NAME], False
        else:
            raise InvalidArgument(
                f"base {folder}: no model.safetensors or {INDEX_NAME} (pickle checkpoints are not"
                " read; re-save the base with save_pretrained(safe_serialization=True))"
            )
        tensors: dict[str, TensorInfo] = {}
        shard_of: dict[str, str] = {}
        shard_metadata: dict[str, dict[str, str]] = {}
        for shard in shards:
            found, shard_metadata[shard] = read_header(folder / shard)
            _check_complete(folder / shard, found)
            for name, info in found.items():
                tensors[name] = info
                shard_of[name] = shard
        return cls(
            folder, config, shards, tensors, shard_of, index_metadata, indexed, shard_metadata
        )

    # -- facts ----------------------------------------------------------------------------
    @property
    def architecture(self) -> str:
        """The model class, e.g. ``LlamaForCausalLM`` (``config.architectures[0]``)."""
        archs = self.config.get("architectures") or [""]
        return str(archs[0])

    def text_config(self) -> dict[str, Any]:
        """The language model's config (``text_config`` for multimodal wrappers)."""
        return dict(self.config.get("text_config") or self.config)

    @property
    def embed_name(self) -> str | None:
        """The input embedding's tensor name, if the base has one."""
        return next((n for n in self.tensors if n.endswith(EMBED_SUFFIXES)), None)

    @property
    def tied(self) -> bool:
        """True when the output projection reuses the input embedding (no lm_head tensor)."""
        tie = self.config.get("tie_word_embeddings")
        if tie is None:
            tie = self.text_config().get("tie_word_embeddings", True)
        return bool(tie) and LM_HEAD not in self.tensors and self.embed_name is not None

    @property
    def size_bytes(self) -> int:
        return sum(info.nbytes for info in self.tensors.values())

    def side_files(self) -> list[Path]:
        """Tokenizer, generation and template files to copy next to exported weights."""
        return [self.path / name for name in SIDE_FILES if (self.path / name).is_file()]

    def resolve(self, module: str, param: str = "weight") -> str | None:
        """The base tensor name of ``<module>.<param>``, tolerating a missing/extra prefix.

        PEFT names modules from the model class (``model.layers.0.self_attn.q_proj``); most
        checkpoints use the same names, some drop the wrapper (``transformer.h.0`` vs ``h.0``).
        """
        name = f"{module}.{param}"
        if name in self.tensors:
            return name
        parts = module.split(".")
        for start in range(1, len(parts)):
            candidate = ".".join(parts[start:]) + f".{param}"
            if candidate in self.tensors:
                return candidate
        for prefix in ("model.", "transformer."):
            if prefix + name in self.tensors:
                return prefix + name
        if name == LM_HEAD and self.tied:
            return LM_HEAD
        return None

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor ``name``; the tied lm_head has the embedding's shape."""
        if name in self.resized:
            return self.resized[name]
        if name == LM_HEAD and LM_HEAD not in self.tensors and self.embed_name:
            return self.tensors[self.embed_name].shape
        return self.tensors[name].shape


def _check_complete(path: Path, tensors: dict[str, TensorInfo]) -> None:
    """Refuse a shard shorter than its header says (an interrupted download or copy)."""
    end = max((info.start + info.nbytes for info in tensors.values()), default=0)
    size = path.stat().st_size
    if size < end:
        raise InvalidArgument(
            f"base {path}: truncated: its header says {end} bytes, the file has {size}"
        )
