"""Export through PEFT's own ``merge_and_unload``, for the methods whose merge the hub does not
stream itself (``merge="peft"`` in ``schemas.methods``: OFT, BOFT, FourierFT, HRA...).

``merged_deltas`` runs the same merge for ``hub compare``: each adapted module's weight after
the merge minus before (OFT's and BOFT's weight deltas, which depend on the base weight).

PEFT merges a loaded model, so this path holds the whole base in memory (in fp32, then rounded
once to the output dtype), unlike the streamed merge, which holds a few tensors. It writes
merged safetensors only: the quantized and adapter-carrying formats need the streamed merge's
per-tensor edits. The output goes through the same staging folder as every other format.

With ``--device cuda`` the model is loaded on the CPU, moved to the GPU for the merge (each
method's merge is matrix work: OFT's Cayley transforms, BOFT's butterflies...), rounded there
and saved from there: the whole model in fp32 must then fit in the GPU's memory (about
4 bytes per parameter; ``--device cpu`` otherwise).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compose.deploy.output import check_disk_space, model_card
from compose.staging import staged_folder
from schemas.errors import IncompatibleAdapters, InvalidAdapter, InvalidArgument
from schemas.methods import METHODS, Row

if TYPE_CHECKING:
    from torch import Tensor

    from compose.deploy.api import AdapterSource
    from compose.deploy.base import BaseFolder
    from schemas.export import ExportSpec

MEMORY_NOTE = "merged by PEFT's merge_and_unload, which holds the whole model in memory"
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def adapter_row(path: Path) -> Row | None:
    """The fact row of the adapter folder ``path`` (None when it is no known PEFT type:
    the streamed loader reports that with its own message)."""
    config_path = path / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return None
    peft_type = config.get("peft_type") if isinstance(config, dict) else None
    return METHODS.get(peft_type.lower()) if isinstance(peft_type, str) else None


def refuse_unmergeable(row: Row, label: str) -> IncompatibleAdapters:
    """The one-line refusal for a method nothing can merge (prompt learning, routers...)."""
    why = row.note or "PEFT cannot merge it"
    return IncompatibleAdapters(
        f"adapter {label}: method {row.method} cannot be merged into weights ({why}); serve it"
        " with the PEFT runtime: PeftModel.from_pretrained(base, adapter)",
        adapter=label,
    )


def check_peft_format(rows: list[tuple[Row, str]], spec: ExportSpec) -> None:
    """Refuse every format but merged safetensors for adapters only PEFT can merge."""
    if spec.format == "safetensors":
        return
    row, label = next((r, lab) for r, lab in rows if r.merge == "peft")
    raise IncompatibleAdapters(
        f"adapter {label}: method {row.method} is merged by PEFT's merge_and_unload, which only"
        f" gives merged weights: --format {spec.format} is not supported for it; export"
        " --format safetensors (then convert that folder if needed)",
        adapter=label,
    )


def export_with_peft(
    base: BaseFolder,
    sources: list[AdapterSource],
    target: Path,
    spec: ExportSpec,
    *,
    force: bool,
    base_label: str,
    recipe: dict[str, Any] | None,
    device: str = "cpu",
) -> tuple[list[str], int, dict[str, Any]]:
    """Merge ``sources`` in order into ``base`` with PEFT, on ``device``, and write merged
    safetensors.

    Every adapter is loaded and merged before the staging folder exists, so a merge PEFT
    refuses (BEFT on a layer without bias...) leaves nothing behind.

    Returns:
        (files written, total size, details for the result: the model card's, and the
        ``device``).

    Raises:
        IncompatibleAdapters: PEFT refuses to load or merge an adapter (its message quoted).
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from compose.deploy.merged import exact_fp32

    # fp32 for the merge itself (the numerics contract), rounded once when saved.
    check_disk_space(target, base.size_bytes * (2 if spec.dtype == "fp32" else 1))
    model: Any = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    model = model.to(device)  # the adapters load where the model is
    for source in sources:
        with exact_fp32(device), _peft_errors(source.label):
            model = PeftModel.from_pretrained(model, str(source.path)).merge_and_unload()
    dtype = spec.dtype or _base_dtype(base)
    model = model.to(getattr(torch, _DTYPES[dtype]))
    details: dict[str, Any] = {"dtype": dtype, "merge": MEMORY_NOTE}
    with staged_folder(target, force=force) as staging:
        model.save_pretrained(staging, safe_serialization=True)  # from the GPU: bytes come back
        for path in base.side_files():
            (staging / path.name).write_bytes(path.read_bytes())
        (staging / "README.md").write_text(
            model_card(
                title=target.name,
                fmt=spec.format,
                base=base_label,
                adapters=[s.label for s in sources],
                details=details,
                recipe=recipe,
            )
        )
        files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
    return files, size, {**details, "device": device}


def merged_deltas(base_path: Path, adapter_path: Path, label: str) -> dict[str, Tensor]:
    """Each adapted module's weight after PEFT's ``merge_and_unload`` minus before: the merge
    ``export_with_peft`` writes (OFT's and BOFT's rotations of the base weight...), as deltas.

    The base loads in fp32 (as for export); each adapted layer, its factors included, is
    widened to fp64 before the merge, so the difference does not lose the small delta in the
    rounding of the large weight. Deltas are fp32, ``(out, in)`` (a ``Conv1D``'s transposed).

    Returns:
        module name (PEFT's, without ``base_model.model.``) -> delta.

    Raises:
        IncompatibleAdapters: PEFT refuses to load or merge the adapter on this base, or it
            adapts a convolution.
        InvalidAdapter: PEFT cannot read it.
        InvalidArgument: transformers cannot load the base.
    """
    import torch
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    try:
        model: Any = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise InvalidArgument(
            f"base {base_path}: transformers cannot load it ({_first_line(error)})"
        ) from error
    with _peft_errors(label):
        peft_model = PeftModel.from_pretrained(model, str(adapter_path))
        layers: dict[str, Any] = {  # torch modules, each a PEFT tuner layer
            name.removeprefix("base_model.model."): layer
            for name, layer in peft_model.named_modules()
            if isinstance(layer, BaseTunerLayer)
        }
        before: dict[str, Tensor] = {}
        for name, layer in layers.items():
            weight = layer.get_base_layer().weight
            if weight.dim() != 2:
                raise IncompatibleAdapters(
                    f"adapter {label}: module {name} is a convolution; only linear layers"
                    " have a weight delta here",
                    adapter=label,
                    module=name,
                )
            layer.to(torch.float64)
            before[name] = layer.get_base_layer().weight.detach().clone()
        merged = dict(peft_model.merge_and_unload().named_modules())
    out: dict[str, Tensor] = {}
    for name, weight in before.items():
        delta = merged[name].weight.detach() - weight
        out[name] = (delta.T if isinstance(merged[name], Conv1D) else delta).float().contiguous()
    return out


@contextlib.contextmanager
def _peft_errors(label: str) -> Iterator[None]:
    """PEFT's failures to load or merge adapter ``label`` as our one-line errors."""
    try:
        yield
    except IncompatibleAdapters:
        raise
    except (ValueError, NotImplementedError, AttributeError, RuntimeError) as error:
        raise IncompatibleAdapters(
            f"adapter {label}: PEFT cannot merge it into this base"
            f" ({type(error).__name__}: {_first_line(error)})",
            adapter=label,
        ) from error
    except KeyError as error:
        raise InvalidAdapter(
            f"adapter {label}: PEFT cannot load it ({_first_line(error)})"
        ) from error


def _base_dtype(base: BaseFolder) -> str:
    """The base's own dtype as an export dtype (fp32 when it mixes or is unknown)."""
    names = {info.dtype for info in base.tensors.values()}
    return {"F16": "fp16", "BF16": "bf16"}.get(names.pop(), "fp32") if len(names) == 1 else "fp32"


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or repr(error)
    return text.splitlines()[0]
