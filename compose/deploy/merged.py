"""Merged weights, one tensor at a time, and the streaming safetensors export.

``MergePlan`` says, for every output tensor, where its base bytes come from and which edits
(of which adapters, in order) change it. ``merged_tensor`` computes one output tensor in fp32
and the writers round it once to the output dtype. Untouched tensors are copied byte for byte
when the dtype does not change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compose.deploy.adapters import Adapter, Edit, touches_embeddings
from compose.deploy.base import INDEX_NAME, LM_HEAD, BaseFolder
from compose.deploy.stio import StreamWriter, TensorInfo, read_tensor

if TYPE_CHECKING:
    import torch

DTYPES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}
CONFIG_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


@dataclass
class MergePlan:
    """What to write for each output tensor, in the base's shard layout."""

    base: BaseFolder
    adapters: list[Adapter]
    untie: bool
    edits: dict[str, list[Edit]] = field(default_factory=dict)
    shard_tensors: dict[str, list[str]] = field(default_factory=dict)
    """Shard file -> output tensor names, in the base's order (plus lm_head when untied)."""

    def source(self, name: str) -> TensorInfo:
        """The base tensor an output tensor starts from (the embedding for an untied lm_head)."""
        if name == LM_HEAD and LM_HEAD not in self.base.tensors:
            assert self.base.embed_name is not None
            return self.base.tensors[self.base.embed_name]
        return self.base.tensors[name]

    @property
    def names(self) -> list[str]:
        return [name for names in self.shard_tensors.values() for name in names]


def make_plan(base: BaseFolder, adapters: list[Adapter]) -> MergePlan:
    """Group every adapter's edits by target tensor (adapter order kept) and lay out shards.

    When the base ties its embeddings and an adapter changes either side, the output unties
    them: a separate ``lm_head.weight`` is written next to the embedding (PEFT's own
    ``merge_and_unload`` would merge the delta into the shared tensor and change both).
    """
    untie = base.tied and touches_embeddings(adapters, base)
    plan = MergePlan(base, adapters, untie)
    for adapter in adapters:
        for edit in adapter.edits:
            plan.edits.setdefault(edit.target, []).append(edit)
    for shard in base.shards:
        plan.shard_tensors[shard] = [n for n in base.tensors if base.shard_of[n] == shard]
    if untie:
        assert base.embed_name is not None
        shard = base.shard_of[base.embed_name]
        names = plan.shard_tensors[shard]
        names.insert(names.index(base.embed_name) + 1, LM_HEAD)
    return plan


def merged_tensor(plan: MergePlan, name: str) -> torch.Tensor | None:
    """The output tensor ``name`` in fp32 with every edit applied in order; None if untouched."""
    edits = plan.edits.get(name)
    if not edits:
        return None
    import torch

    weight = read_tensor(plan.source(name)).to(torch.float32)  # the bf16 read is freed here
    for edit in edits:
        weight = edit.apply(weight)
    return weight


def output_dtype(info: TensorInfo, dtype: str | None) -> str:
    """Float tensors take the requested dtype; integer buffers and unset dtype keep theirs."""
    return DTYPES[dtype] if dtype and info.is_float else info.dtype


def export_safetensors(
    plan: MergePlan,
    out: Path,
    *,
    dtype: str | None,
    progress: Callable[[int], None] | None = None,
    transform: Callable[[str, TensorInfo, torch.Tensor | None], list[tuple[str, Any]]]
    | None = None,
    entries_for: Callable[[str, TensorInfo, str], list[tuple[str, str, tuple[int, ...]]]]
    | None = None,
) -> dict[str, str]:
    """Write merged shards into ``out`` with the base's shard names; returns the weight map.

    ``transform``/``entries_for`` let the FP8 writer reuse the same streaming loop (one output
    tensor may become a weight plus its scale).
    """
    weight_map: dict[str, str] = {}
    writers: list[StreamWriter] = []
    try:
        for shard, names in plan.shard_tensors.items():
            entries: list[tuple[str, str, tuple[int, ...]]] = []
            for name in names:
                info = plan.source(name)
                target_dtype = output_dtype(info, dtype)
                if entries_for is not None:
                    entries.extend(entries_for(name, info, target_dtype))
                else:
                    entries.append((name, target_dtype, info.shape))
            writer = StreamWriter(out / shard, entries, {"format": "pt"})
            writers.append(writer)
            for name in names:
                info = plan.source(name)
                merged = merged_tensor(plan, name)
                if transform is not None:
                    for out_name, data in transform(name, info, merged):
                        writer.write(out_name, data)
                        weight_map[out_name] = shard
                else:
                    target = output_dtype(info, dtype)
                    if merged is None and target == info.dtype:
                        writer.copy(name, info)  # unchanged: copied kernel-side
                    else:
                        writer.write(name, _rounded(info, merged, target))
                    weight_map[name] = shard
                del merged
                if progress is not None:
                    progress(info.nbytes)
            writer.close()  # the fsync overlaps the next shard
        for writer in writers:
            writer.wait()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    return weight_map


def _rounded(info: TensorInfo, merged: torch.Tensor | None, target: str) -> Any:
    """The output tensor, rounded once to its output dtype."""
    from compose.deploy.stio import torch_dtype

    tensor = merged if merged is not None else read_tensor(info)
    return tensor.to(torch_dtype(target))


def write_index(plan: MergePlan, out: Path, weight_map: dict[str, str]) -> None:
    """``model.safetensors.index.json`` (only when the base is sharded), sizes recomputed."""
    if not plan.base.indexed:
        return
    total = sum((out / shard).stat().st_size for shard in plan.shard_tensors)
    metadata = {**plan.base.index_metadata, "total_size": total}
    (out / INDEX_NAME).write_text(
        json.dumps({"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))}, indent=2)
        + "\n"
    )


def write_config(
    plan: MergePlan, out: Path, dtype: str | None, extra: dict[str, Any] | None = None
) -> None:
    """The base's config.json, untied when the plan unties, with the output dtype recorded."""
    config = dict(plan.base.config)
    if plan.untie:
        config["tie_word_embeddings"] = False
        if isinstance(config.get("text_config"), dict):
            config["text_config"] = {**config["text_config"], "tie_word_embeddings": False}
    if dtype:
        key = "dtype" if "dtype" in config or "torch_dtype" not in config else "torch_dtype"
        config[key] = CONFIG_DTYPES[DTYPES[dtype]]
    config.update(extra or {})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
