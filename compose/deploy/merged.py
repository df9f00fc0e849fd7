"""Merged weights, one tensor at a time, and the streaming safetensors export.

``MergePlan`` says, for every output tensor, where its base bytes come from and which edits
(of which adapters, in order) change it. ``merged_tensor`` computes one output tensor in fp32
and the writers round it once to the output dtype. Untouched tensors are copied byte for byte
when the dtype does not change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compose.deploy.adapters import Adapter, Edit, touches_embeddings
from compose.deploy.base import INDEX_NAME, LM_HEAD, BaseFolder
from compose.deploy.stio import BufferPool, Prefetcher, TensorInfo, read_tensor, torch_dtype
from compose.deploy.writers import ShardCopier, StreamWriter

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


def merged_tensor(
    plan: MergePlan, name: str, data: torch.Tensor | None = None
) -> torch.Tensor | None:
    """The output tensor ``name`` in fp32 with every edit applied in order; None if untouched.

    ``data`` is the base tensor when the caller has read it already (left unchanged).
    """
    edits = plan.edits.get(name)
    if not edits:
        return None
    import torch

    source = data if data is not None else read_tensor(plan.source(name))
    weight = source.to(torch.float32, copy=True)
    del source  # a bf16 read is freed here
    for edit in edits:
        weight = edit.apply(weight)
    return weight


BLOCK_ELEMENTS = 1 << 18
"""fp32 elements per row block (1 MiB): small enough to stay in the CPU's cache, large enough
that torch's per-call overhead does not show."""


def merged_rounded(
    plan: MergePlan, name: str, target: str, data: torch.Tensor | None = None
) -> torch.Tensor | None:
    """The output tensor ``name`` in safetensors dtype ``target``; None if no edit touches it.

    The delta is still computed in fp32 and rounded once, but block by block: each block of
    rows is widened into a small reused fp32 buffer, edited, and rounded back into the tensor
    that was read (or into the output tensor when the dtype changes). A whole-tensor fp32 copy
    would cost two large fresh allocations and a pass through memory each way; this stays in
    cache and holds about one tensor in its stored dtype.

    ``data`` is the base tensor when the caller has read it already; it may be overwritten
    with the result (which is then ``data`` itself).
    """
    edits = plan.edits.get(name)
    if not edits:
        return None
    import torch

    info = plan.source(name)
    row_edits = [edit.rows for edit in edits]
    if info.shape and len(info.shape) <= 2 and all(rows is not None for rows in row_edits):
        if data is None:
            data = read_tensor(info)
        out = data if info.dtype == target else torch.empty_like(data, dtype=torch_dtype(target))
        count = info.shape[0]
        width = info.shape[1] if len(info.shape) == 2 else 1
        step = max(1, BLOCK_ELEMENTS // max(width, 1))
        scratch = torch.empty(min(step, count) * width, dtype=torch.float32)
        for start in range(0, count, step):
            rows = slice(start, min(start + step, count))
            size = (rows.stop - start) * width
            block = scratch[:size].view((rows.stop - start, *info.shape[1:]))
            block.copy_(data[rows])
            for edit_rows in row_edits:
                assert edit_rows is not None
                block = edit_rows(block, rows)
            out[rows].copy_(block)  # the one rounding to the output dtype
        return out
    merged = merged_tensor(plan, name, data)
    assert merged is not None
    return merged.to(torch_dtype(target))


def keeps_layout(base: BaseFolder, dtype: str | None) -> bool:
    """True when a merged safetensors export has the base's exact file layout: no tensor
    changes dtype and no ``lm_head`` is added (only a tied base can be untied)."""
    if base.tied:
        return False
    return all(output_dtype(info, dtype) == info.dtype for info in base.tensors.values())


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
    copier: ShardCopier | None = None,
) -> dict[str, str]:
    """Write merged shards into ``out`` with the base's shard names; returns the weight map.

    ``transform``/``entries_for`` let the FP8 writer reuse the same streaming loop (one output
    tensor may become a weight plus its scale). With ``copier`` (copying the base's shards into
    ``out``; only when the output keeps the base's layout, see ``keeps_layout``), each shard's
    copy is patched: only the tensors that change are written.
    """
    import torch

    weight_map: dict[str, str] = {}
    writers: list[StreamWriter] = []
    pool = BufferPool()
    # One core is left to the reading and writing threads: torch's own threads wait for each
    # other at every operation, and one of them descheduled by I/O stalls them all.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 2) - 1)))
    # The base tensors that change are read on a background thread, ahead of their merge.
    reads = Prefetcher([plan.source(n) for n in plan.names if plan.edits.get(n)], pool)
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
            if copier is not None:
                copy = copier.wait(shard)
                writer = StreamWriter.patching(copy, {n: plan.source(n) for n in names})
            else:
                writer = StreamWriter(out / shard, entries, {"format": "pt"})
            writers.append(writer)
            for name in names:
                info = plan.source(name)
                base_tensor = reads.next() if plan.edits.get(name) else None
                if transform is not None:
                    merged = merged_tensor(plan, name, base_tensor)
                    if base_tensor is not None:
                        pool.give(base_tensor)
                    for out_name, data in transform(name, info, merged):
                        writer.write(out_name, data)
                        weight_map[out_name] = shard
                    del merged
                else:
                    target = output_dtype(info, dtype)
                    rounded = merged_rounded(plan, name, target, base_tensor)
                    if rounded is not None:
                        if base_tensor is not None and rounded is not base_tensor:
                            pool.give(base_tensor)
                        writer.write(name, rounded, recycle=pool.give)
                    elif target == info.dtype:
                        writer.copy(name, info)  # unchanged: copied kernel-side
                    else:
                        writer.write(name, read_tensor(info).to(torch_dtype(target)))
                    weight_map[name] = shard
                    del rounded
                if progress is not None:
                    progress(info.nbytes)
            writer.close()  # the fsync overlaps the next shard
        for writer in writers:
            writer.wait()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    finally:
        reads.close()
        torch.set_num_threads(threads)
    return weight_map


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
