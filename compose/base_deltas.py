"""Weight deltas that depend on the base weight, for weight-space similarity.

A LoRA's delta is its own (``B @ A``, ``compose.adapter_io``); these methods' are not:

- IA3 scales the base weight's rows (``(d, 1)`` vectors) or columns (``(1, k)``, feed-forward
  layers): its delta is ``(l - 1) * W``. Read through deploy's IA3 edit (the same shape checks
  and layout as ``hub export``), on the base tensors alone.
- OFT and BOFT rotate the base weight (PEFT's merge: ``W R^T``): their delta is
  ``W (R^T - I)``, computed by PEFT's own ``merge_and_unload``, the merge ``hub export`` writes
  for them (``compose.deploy.peft_merge.merged_deltas``; no second copy of the rotation math).

Every delta is fp32 in the ``(out, in)`` layout LoRA's ``B @ A`` has, keyed by PEFT's module
name (``model.layers.0.self_attn.q_proj``).

Example:
    >>> deltas = base_deltas(Path("ia3-adapter"), "ia3", Path("models/llama"), "team/ia3")
    ...                                                                 # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from schemas.errors import InvalidArgument

if TYPE_CHECKING:
    from torch import Tensor

METHODS = ("ia3", "oft", "boft")
"""The methods whose weight delta is computed here, from the base weight."""


def base_deltas(folder: Path, method: str, base_dir: Path, label: str) -> dict[str, Tensor]:
    """Each adapted module's dense weight delta on the base at ``base_dir``.

    Raises:
        InvalidArgument: ``method`` is not one of ``METHODS``, or the base folder is not a
            model folder with safetensors weights.
        IncompatibleAdapters: the base does not match the adapter (module and shapes named).
    """
    if method == "ia3":
        return _ia3_deltas(folder, base_dir, label)
    if method in ("oft", "boft"):
        from compose.deploy.peft_merge import merged_deltas

        return merged_deltas(base_dir, folder, label)
    raise InvalidArgument(f"{label}: {method} has no base-dependent weight delta here")


def _ia3_deltas(folder: Path, base_dir: Path, label: str) -> dict[str, Tensor]:
    """``(l - 1) * W`` per module: deploy's IA3 edit applied to the base weight (fp64), minus
    the weight. The edit of a layer's bias (scaled like its rows) is not a weight delta."""
    from compose.deploy.adapters import load_adapter
    from compose.deploy.base import LM_HEAD, BaseFolder
    from compose.deploy.stio import read_tensor

    base = BaseFolder.open(base_dir)
    adapter = load_adapter(folder, base, label)
    transposed = bool(adapter.config.get("fan_in_fan_out"))
    out: dict[str, Tensor] = {}
    for edit in adapter.edits:
        if edit.kind != "ia3" or edit.target == base.resolve(edit.module, "bias"):
            continue
        name = edit.target
        if name == LM_HEAD and name not in base.tensors and base.embed_name:
            name = base.embed_name  # a tied lm_head is the embedding
        weight = read_tensor(base.tensors[name]).double()
        delta = edit.apply(weight.clone()) - weight
        out[edit.module] = (delta.T if transposed else delta).float().contiguous()
    return out
