"""Merged weights, one tensor at a time, and the streaming safetensors export.

``MergePlan`` says, for every output tensor, where its base bytes come from and which edits
(of which adapters, in order) change it. ``merged_blocks`` computes an output tensor in fp32
one block of rows at a time (``merged_tensor`` all at once, for edits that need the whole
weight) and the writers round it once to the output dtype. Untouched tensors are copied byte
for byte when the dtype does not change, or already are, in the base's copy being patched.

On a GPU (``MergePlan.device``) each touched tensor is merged whole instead: moved there in
its stored dtype, widened and edited in fp32, rounded there, and only the rounded bytes come
back (``merged_rounded``, ``to_host``). Reading and writing stream on the CPU as they do for a
CPU merge: the next tensor is read while this one is merged.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compose.deploy.adapters import (
    Adapter,
    may_touch_embeddings,
    resizes_vocabulary,
    touches_embeddings,
)
from compose.deploy.base import INDEX_NAME, LM_HEAD, BaseFolder
from compose.deploy.edits import Edit
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
    resized: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Output tensors whose shape an adapter changes (a vocabulary resized for training)."""
    device: str = "cpu"
    """Where the merge math runs (``cpu`` or ``cuda``): the adapters' factors are there
    (``load_adapter(device=...)``), and base tensors are moved there to be merged."""

    def shape(self, name: str) -> tuple[int, ...]:
        """The output tensor's shape: the base's, unless an adapter resized it."""
        return self.resized.get(name, self.source(name).shape)

    def source(self, name: str) -> TensorInfo:
        """The base tensor an output tensor starts from (the embedding for an untied lm_head)."""
        if name == LM_HEAD and LM_HEAD not in self.base.tensors:
            assert self.base.embed_name is not None
            return self.base.tensors[self.base.embed_name]
        return self.base.tensors[name]

    @property
    def names(self) -> list[str]:
        return [name for names in self.shard_tensors.values() for name in names]


def make_plan(base: BaseFolder, adapters: list[Adapter], device: str = "cpu") -> MergePlan:
    """Group every adapter's edits by target tensor (adapter order kept) and lay out shards;
    the merge runs on ``device``, where the adapters' factors were loaded.

    When the base ties its embeddings and an adapter changes either side, the output unties
    them: a separate ``lm_head.weight`` is written next to the embedding (PEFT's own
    ``merge_and_unload`` would merge the delta into the shared tensor and change both).
    """
    untie = base.tied and touches_embeddings(adapters, base)
    plan = MergePlan(base, adapters, untie, device=device)
    for adapter in adapters:
        plan.resized.update(adapter.resized)
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


def merged_tensor(plan: MergePlan, name: str, data: torch.Tensor) -> torch.Tensor | None:
    """Output tensor ``name`` in fp32 on the plan's device, every edit applied in order to a
    copy of its base tensor ``data`` (left unchanged); None if untouched."""
    edits = plan.edits.get(name)
    if not edits:
        return None
    weight = widened(plan, data)
    for edit in edits:
        weight = edit.apply(weight)
    return weight


def widened(plan: MergePlan, data: torch.Tensor) -> torch.Tensor:
    """An fp32 copy of base tensor ``data`` on the plan's device (``data`` left unchanged)."""
    import torch

    if plan.device == "cpu":
        return data.to(torch.float32, copy=True)
    # Moved in its stored dtype (half the bytes of fp32 for bf16), widened there.
    return data.to(plan.device).to(torch.float32)


def to_host(tensor: torch.Tensor, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """``tensor`` on the CPU: itself when it is there; else copied into ``buffer`` (the base
    tensor's pooled buffer) when dtype and shape match, or into a new tensor."""
    if tensor.device.type == "cpu":
        return tensor
    if buffer is not None and buffer.dtype == tensor.dtype and buffer.shape == tensor.shape:
        return buffer.copy_(tensor)
    return tensor.cpu()


@contextlib.contextmanager
def exact_fp32(device: str) -> Iterator[None]:
    """fp32 matrix products in full fp32 on a GPU for the ``with`` block.

    TF32 (Ampere and later) would round the factors to 10 mantissa bits inside each product,
    an error far above the "rounded once" contract. torch's default already leaves it off
    (``torch.backends.cuda.matmul.allow_tf32`` is False): this keeps it so even when the caller
    turned it on (``torch.set_float32_matmul_precision("high")``), and restores their setting.
    """
    if device == "cpu":
        yield
        return
    import torch

    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32 = before


BLOCK_ELEMENTS = 1 << 18
"""fp32 elements per row block (1 MiB): small enough to stay in the CPU's cache, large enough
that torch's per-call overhead does not show."""


def merged_blocks(
    plan: MergePlan, name: str, data: torch.Tensor
) -> Iterator[tuple[slice, torch.Tensor]] | None:
    """Output tensor ``name`` as ``(rows, fp32 block)`` pairs, from its base tensor ``data``.

    Each block of rows is widened into one small reused fp32 buffer and every edit applied to
    it in order (an untouched tensor is only widened). Whole-tensor fp32 copies would cost two
    large fresh allocations and a pass through memory each way; blocks stay in cache. A block
    is only valid until the next one is produced. None when an edit needs the whole weight
    (``Edit.rows`` is None), the tensor is not 1-D/2-D, or the merge runs on a GPU (one
    transfer each way and a few large kernels beat many small ones there): use
    ``merged_tensor`` then.
    """
    row_edits = [edit.rows for edit in plan.edits.get(name, [])]
    if plan.device != "cpu" or data.ndim not in (1, 2) or any(r is None for r in row_edits):
        return None
    return _blocks(data, [rows for rows in row_edits if rows is not None])


def _blocks(
    data: torch.Tensor, row_edits: list[Callable[[torch.Tensor, slice], torch.Tensor]]
) -> Iterator[tuple[slice, torch.Tensor]]:
    import torch

    count = data.shape[0]
    width = data.shape[1] if data.ndim == 2 else 1
    step = max(1, BLOCK_ELEMENTS // max(width, 1))
    scratch = torch.empty(min(step, count) * width, dtype=torch.float32)
    for start in range(0, count, step):
        rows = slice(start, min(start + step, count))
        block = scratch[: (rows.stop - start) * width].view((rows.stop - start, *data.shape[1:]))
        block.copy_(data[rows])
        for edit_rows in row_edits:
            block = edit_rows(block, rows)
        yield rows, block


def merged_rounded(
    plan: MergePlan, name: str, target: str, data: torch.Tensor
) -> torch.Tensor | None:
    """Output tensor ``name`` in safetensors dtype ``target`` from its base tensor ``data``,
    on the CPU; None if no edit touches it.

    The delta is computed in fp32 and rounded once, block by block (``merged_blocks``), into
    ``data`` itself (or into a new tensor when the dtype changes), so memory holds about one
    tensor in its stored dtype. On a GPU the whole tensor is rounded there and its rounded
    bytes come back into ``data`` (or a new tensor when the dtype or shape changes).
    """
    if not plan.edits.get(name):
        return None
    import torch

    blocks = merged_blocks(plan, name, data)
    if blocks is None:
        merged = merged_tensor(plan, name, data)
        assert merged is not None
        return to_host(merged.to(torch_dtype(target)), data)  # the one rounding
    out = (
        data
        if data.dtype == torch_dtype(target)
        else torch.empty_like(data, dtype=torch_dtype(target))
    )
    for rows, block in blocks:
        out[rows].copy_(block)  # the one rounding to the output dtype
    return out


@contextlib.contextmanager
def core_for_io() -> Iterator[None]:
    """Leave one core to the threads that read and write while torch computes.

    torch's threads wait for each other at the end of every operation, so one of them
    descheduled for an I/O thread stalls them all; on 2 cores the merge ran twice as fast on
    one thread, and the whole export about 10% faster.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 2) - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def keeps_layout(base: BaseFolder, dtype: str | None, adapters: list[Path]) -> bool:
    """True when merging the adapter folders into ``base`` keeps its exact file layout: no
    tensor changes dtype and no ``lm_head`` is added (a tied base is untied only when an
    adapter touches the embeddings). Reads headers only, so it can run before torch loads."""
    if (base.tied and may_touch_embeddings(adapters, base)) or resizes_vocabulary(adapters, base):
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
    transform: Callable[[str, TensorInfo, torch.Tensor], list[tuple[str, Any]]] | None = None,
    entries_for: Callable[[str, TensorInfo, str], list[tuple[str, str, tuple[int, ...]]]]
    | None = None,
    copier: ShardCopier | None = None,
) -> dict[str, str]:
    """Write merged shards into ``out`` with the base's shard names; returns the weight map.

    ``transform``/``entries_for`` let the FP8 writer reuse the same streaming loop: it gets
    each base tensor (to merge with ``merged_blocks``) and returns the output tensors (a
    weight may become a weight plus its scale). With ``copier`` (copying the base's shards into
    ``out``; only when the output keeps the base's layout, see ``keeps_layout``), each shard's
    copy is patched: only the tensors that change are written.
    """
    weight_map: dict[str, str] = {}
    writers: list[StreamWriter] = []
    pool = BufferPool()
    # The base tensors that change are read on a background thread, ahead of their merge.
    reads = Prefetcher([plan.source(n) for n in plan.names if plan.edits.get(n)], pool)
    try:
        with core_for_io(), exact_fp32(plan.device):
            for shard, names in plan.shard_tensors.items():
                writer = _open_shard(plan, out, shard, names, dtype, entries_for, copier)
                writers.append(writer)
                for name in names:
                    base_tensor = reads.next() if plan.edits.get(name) else None
                    for written in _write_tensor(
                        plan, writer, name, base_tensor, pool, dtype, transform
                    ):
                        weight_map[written] = shard
                    if progress is not None:
                        progress(plan.source(name).nbytes)
                writer.close()  # the fsync overlaps the next shard
            for writer in writers:
                writer.wait()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    finally:
        reads.close()
    return weight_map


def _open_shard(
    plan: MergePlan,
    out: Path,
    shard: str,
    names: list[str],
    dtype: str | None,
    entries_for: Callable[[str, TensorInfo, str], list[tuple[str, str, tuple[int, ...]]]] | None,
    copier: ShardCopier | None,
) -> StreamWriter:
    """The writer of one output shard: over the base shard's copy, or a new file."""
    if copier is not None:
        return StreamWriter.patching(copier.wait(shard), {n: plan.source(n) for n in names})
    entries: list[tuple[str, str, tuple[int, ...]]] = []
    for name in names:
        info = plan.source(name)
        if entries_for is not None:
            entries.extend(entries_for(name, info, output_dtype(info, dtype)))
        else:
            entries.append((name, output_dtype(info, dtype), plan.shape(name)))
    metadata = {**plan.base.shard_metadata.get(shard, {}), "format": "pt"}
    return StreamWriter(out / shard, entries, metadata)


def _write_tensor(
    plan: MergePlan,
    writer: StreamWriter,
    name: str,
    base_tensor: torch.Tensor | None,
    pool: BufferPool,
    dtype: str | None,
    transform: Callable[[str, TensorInfo, torch.Tensor], list[tuple[str, Any]]] | None,
) -> list[str]:
    """Queue output tensor ``name`` (merged if edits touch it); returns the names written."""
    info = plan.source(name)
    if transform is not None:
        outputs = transform(
            name, info, base_tensor if base_tensor is not None else read_tensor(info)
        )
        for out_name, data in outputs:
            writer.write(out_name, data)
        storages = {data.untyped_storage().data_ptr() for _, data in outputs}
        if base_tensor is not None and base_tensor.untyped_storage().data_ptr() not in storages:
            pool.give(base_tensor)  # not written itself: free for the next read
        return [out_name for out_name, _ in outputs]
    target = output_dtype(info, dtype)
    if base_tensor is not None:  # read ahead because edits touch it
        rounded = merged_rounded(plan, name, target, base_tensor)
        assert rounded is not None
        if rounded is not base_tensor:
            pool.give(base_tensor)
        writer.write(name, rounded, recycle=pool.give)
    elif target == info.dtype:
        writer.copy(name, info)  # unchanged: copied kernel-side (or already in the copy)
    else:
        writer.write(name, read_tensor(info).to(torch_dtype(target)))
    return [name]


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
    """The base's config.json, untied when the plan unties, with the output dtype recorded
    and the vocabulary size of an adapter trained on a resized vocabulary."""
    config = dict(plan.base.config)
    if plan.base.embed_name in plan.resized:
        vocab = plan.resized[plan.base.embed_name][0]
        if isinstance(config.get("text_config"), dict) and "vocab_size" in config["text_config"]:
            config["text_config"] = {**config["text_config"], "vocab_size": vocab}
        else:
            config["vocab_size"] = vocab
    if plan.untie:
        config["tie_word_embeddings"] = False
        if isinstance(config.get("text_config"), dict):
            config["text_config"] = {**config["text_config"], "tie_word_embeddings": False}
    if dtype:
        key = "dtype" if "dtype" in config or "torch_dtype" not in config else "torch_dtype"
        config[key] = CONFIG_DTYPES[DTYPES[dtype]]
    config.update(extra or {})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
