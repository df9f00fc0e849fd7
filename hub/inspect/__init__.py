"""Read an adapter folder into a card, without torch.

``inspect_adapter`` parses ``adapter_config.json`` and the safetensors header, checks that the
tensors agree with the config (ranks, targets, shapes), scans the data for NaN/Inf, and counts
parameters. It never unpickles anything: a folder with only ``adapter_model.bin`` is refused
with a pointer to ``hub convert``.

Modules, by role: ``safetensors_header`` (the file format), ``config`` (adapter_config.json),
``modules`` (which tensors belong to which module; target checks), ``methods`` (per-method
shapes, rank and facts), ``params`` (base-model sizes), ``readme`` (the description),
``composite`` (stacks and ensembles).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from compose.adapterhub import is_adapterhub_folder
from compose.peft_config import unknown_keys
from compose.peft_patterns import LORA_FROZEN_STATE
from hub.formats import refuse_foreign
from hub.inspect.config import get_names, load_config, method_of
from hub.inspect.ledger import compute_ledger
from hub.inspect.methods import (
    PREFIX,
    WEIGHTS,
    Analysis,
    TensorInfoGroups,
    analyse_adalora,
    analyse_boft,
    analyse_ia3,
    analyse_loha_lokr,
    analyse_lora,
    analyse_oft,
    analyse_prompt,
    analyse_vera,
)
from hub.inspect.modules import check_targets, group_by_module
from hub.inspect.params import base_param_count, base_weight_shapes, count_base_params
from hub.inspect.readme import readme_description
from hub.inspect.safetensors_header import TensorInfo, find_nonfinite, read_safetensors_header
from schemas.card import InferenceOverhead, InspectedAdapter
from schemas.errors import InvalidAdapter, UnsafeFormat
from schemas.methods import METHODS

__all__ = [
    "TensorInfo",
    "count_base_params",
    "extra_adapters",
    "inspect_adapter",
    "read_safetensors_header",
    "readme_description",
]

# Config fields copied into ``details`` when set: they change what the adapter does or how it
# must be loaded. (init_lora_weights is apart: only a non-default value matters.)
_CONFIG_DETAILS = (
    "fan_in_fan_out",
    "layers_to_transform",
    "layers_pattern",
    "exclude_modules",
    "target_parameters",
    "layer_replication",
    "trainable_token_indices",
    "lora_bias",
    "use_qalora",
    "loftq_config",
    "alora_invocation_tokens",
    "use_bdlora",
    "kasa_config",
    "velora_config",
    "monteclora_config",
    "ensure_weight_tying",
)


def inspect_adapter(
    path: str | Path,
    *,
    allow_nonfinite: bool = False,
    base_config: dict[str, Any] | None = None,
    base_dirs: Sequence[Path] | None = None,
    optimizer: str | None = None,
) -> InspectedAdapter:
    """Read the adapter folder ``path`` into an ``InspectedAdapter`` (a card without repo).

    Args:
        path: a folder written by PEFT's ``save_pretrained`` (or a composite folder, or an
            AdapterHub ``save_adapter`` folder: ``hub.inspect.adapterhub``).
        allow_nonfinite: accept tensors holding NaN or Inf.
        base_config: the base model's ``config.json``, for ``params_base`` /
            ``params_fraction``. Without it, a local folder named by the adapter's
            ``base_model_name_or_path`` is read (its safetensors headers, else its config).
        base_dirs: where that folder may be (see ``base_param_count``); None: anywhere.
            Its safetensors headers also give the ledger the base's weight shapes.
        optimizer: what trained it, when the files cannot tell (``lorafa``: LoRA-FA froze
            lora_A); from the tag ``optimizer=...`` at push.

    Returns:
        The card's automatic fields: method, variant, rank, alpha, targets, parameter counts,
        size, dtypes, inference overhead, method details and the README description.

    Raises:
        InvalidAdapter: missing/malformed config, corrupt or truncated safetensors, shapes that
            contradict the config, modules the config does not target, NaN/Inf values. The
            message names the file and the field, module or tensor at fault.
        UnsafeFormat: only a pickle ``adapter_model.bin`` is present.
        ForeignFormat: an mlx-lm or torchtune adapter (``hub convert`` makes it PEFT's).

    Example:
        >>> card = inspect_adapter("out/sql-lora")                  # doctest: +SKIP
        >>> card.method, card.rank, card.target_modules
        ('lora', 8, ['q_proj', 'v_proj'])
    """
    folder = Path(path)
    if (folder / "composite.json").is_file() and not (folder / "adapter_config.json").exists():
        from hub.inspect.composite import inspect_composite

        return inspect_composite(
            folder,
            inspect_adapter,
            allow_nonfinite=allow_nonfinite,
            base_dirs=base_dirs,
            optimizer=optimizer,
        )
    if is_adapterhub_folder(folder):
        from hub.inspect.adapterhub import inspect_adapterhub

        return inspect_adapterhub(
            folder, allow_nonfinite=allow_nonfinite, base_config=base_config, base_dirs=base_dirs
        )
    refuse_foreign(folder)  # mlx-lm, torchtune, a Trainer output folder: say what it is
    config = load_config(folder)
    method = method_of(config)
    weights = folder / WEIGHTS
    if not weights.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise UnsafeFormat(
                f"{folder / 'adapter_model.bin'} is a pickle file, which hub never loads"
                f" (it can run code); convert it safely with `hub convert {folder}`",
                path=str(folder),
            )
        raise InvalidAdapter(
            f"{folder}: no {WEIGHTS} (nor adapter_model.bin): the adapter's weights are missing",
            path=str(folder),
        )
    tensors, metadata = read_safetensors_header(weights)

    row = METHODS[method]
    nested = 0
    if row.card == "generic":
        from hub.inspect.generic import analyse_generic

        analysis, frozen, nested = analyse_generic(row, config, tensors, folder)
    else:
        analysis, frozen = _analyse(method, config, tensors, weights)
    if not allow_nonfinite:
        bad = find_nonfinite(weights, tensors)
        if bad is not None:
            raise InvalidAdapter(
                f"{WEIGHTS}: tensor {bad!r} contains NaN or Inf values"
                " (push with --allow-nonfinite to accept it)",
                tensor=bad,
            )

    base_model = _text(config.get("base_model_name_or_path"))
    params_base = base_param_count(base_model, base_config, base_dirs)
    ledger, parts = compute_ledger(
        method,
        config,
        tensors,
        frozen,
        analysis,
        nested=nested,
        params_base=params_base,
        base_shapes=lambda: base_weight_shapes(base_model, base_dirs),
        optimizer=optimizer,
    )
    prompt = row.family == "prompt"
    targets = sorted(
        {name for m in analysis.modules for name in _target_names(m, config)}
        | {m.rsplit(".", 1)[-1] for m in analysis.saved_modules}
    )
    card = InspectedAdapter(
        base_model=base_model,
        base_revision=_text(config.get("revision")),
        method=method,
        variant=analysis.variant,
        rank=analysis.rank,
        alpha=analysis.alpha,
        target_modules=[] if prompt else targets,
        task_type=_text(config.get("task_type")),
        **ledger,
        size_bytes=sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        dtypes=sorted({t.dtype.lower() for t in tensors.values()}),
        # PEFT's family decides it: prompt learning adds virtual tokens, a mergeable tuner
        # costs nothing once merged, any other keeps its extra layers.
        inference_overhead=InferenceOverhead(
            none_when_merged=row.family == "mergeable" and analysis.mergeable,
            extra_tokens=analysis.extra_tokens,
            extra_layers=0 if prompt else len(analysis.modules),
        ),
        details=_details(config, analysis, metadata),
        description=readme_description(folder / "README.md"),
    )
    card._ledger_parts = parts
    return card


def extra_adapters(folder: str | Path) -> list[str]:
    """Names of the extra adapters of a multi-adapter save, sorted; [] for a single adapter.

    ``save_pretrained`` of a PeftModel holding several adapters writes ``default`` at the top
    and every other adapter in a subfolder of its name (``<folder>/<adapter>/adapter_config.
    json``). X-LoRA's subfolders are the LoRAs it mixes, and a composite's are its members:
    parts of the one adapter.
    """
    from compose.composites import COMPOSITE_FILE
    from hub.inspect.files import is_training_output

    root = Path(folder)
    if (root / COMPOSITE_FILE).is_file():
        return []  # a stack or ensemble: its members are parts of the one composite
    subfolders = sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and not is_training_output(f"{p.name}/adapter_config.json", root)  # checkpoint-N/
        and (p / "adapter_config.json").is_file()
    )
    if subfolders and (root / "adapter_config.json").is_file():
        with contextlib.suppress(InvalidAdapter):
            if method_of(load_config(root)) == "xlora":
                return []
    return subfolders


def _target_names(module: str, config: dict[str, Any]) -> set[str]:
    """The module's last name component; for a LoRA on parameters (``target_parameters``),
    the parameters' (``gate_up_proj``), or the module's for a plain ``weight`` (a router)."""
    from compose.peft_patterns import parameter_targets

    names = parameter_targets(module, config.get("target_parameters"))
    if not names:
        return {module.rsplit(".", 1)[-1]}
    found = set()
    for name in names:
        owner, _, param = name.rpartition(".")
        found.add(owner.rsplit(".", 1)[-1] if param in ("weight", "bias") else param)
    return found


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# One analysis per weight-bearing method: (config, modules, weights file, shared tensors).
_Analyse = Callable[[dict[str, Any], TensorInfoGroups, Path, dict[str, TensorInfo]], Analysis]
_ANALYSES: dict[str, _Analyse] = {
    "lora": lambda config, groups, weights, shared: analyse_lora(config, groups),
    "adalora": lambda config, groups, weights, shared: analyse_adalora(config, groups, weights),
    "ia3": lambda config, groups, weights, shared: analyse_ia3(config, groups),
    "loha": lambda config, groups, weights, shared: analyse_loha_lokr("loha", config, groups),
    "lokr": lambda config, groups, weights, shared: analyse_loha_lokr("lokr", config, groups),
    "oft": lambda config, groups, weights, shared: analyse_oft(config, groups),
    "boft": lambda config, groups, weights, shared: analyse_boft(config, groups),
    "vera": lambda config, groups, weights, shared: analyse_vera(config, groups, shared),
}


def _analyse(
    method: str, config: dict[str, Any], tensors: dict[str, TensorInfo], weights: Path
) -> tuple[Analysis, set[str]]:
    """The method's analysis, and the keys of frozen tensors (not counted as trainable)."""
    if METHODS[method].family == "prompt":
        return analyse_prompt(method, config, tensors), set()
    grouping = group_by_module(method, config, tensors)
    if not grouping.modules:
        raise InvalidAdapter(f"{WEIGHTS}: no {method} tensors found", path=str(weights))
    check_targets(config, sorted(grouping.modules))
    shared = {key: tensors[key] for key in grouping.shared}
    analysis = _ANALYSES[method](config, grouping.modules, weights, shared)
    analysis.modules = sorted(grouping.modules)
    analysis.saved_modules = grouping.saved
    analysis.bias_modules = grouping.biases
    analysis.groups = grouping.modules
    analysis.copies = set(grouping.copies)
    if grouping.copies:
        analysis.details.update(_copies_details(grouping.copies))
    buffers = (
        {key for key in tensors if key.endswith(LORA_FROZEN_STATE)} if method == "lora" else set()
    )
    return analysis, grouping.shared | analysis.frozen | set(grouping.copies) | buffers


def _copies_details(copies: dict[str, TensorInfo]) -> dict[str, Any]:
    """The embedding layers PEFT saved whole, and the vocabulary size their rows give (it
    differs from the base's when the vocabulary was resized for training)."""
    from compose.peft_patterns import base_weight_copy

    modules, rows = set(), set()
    for key, info in copies.items():
        found = base_weight_copy(key.removeprefix(PREFIX))
        assert found is not None
        modules.add(found[0])
        if found[1] == "weight" and info.shape:
            rows.add(info.shape[0])
    details: dict[str, Any] = {"saved_embedding_layers": sorted(modules)}
    if len(rows) == 1:
        details["vocab_size"] = rows.pop()
    return details


def _details(
    config: dict[str, Any], analysis: Analysis, metadata: dict[str, str]
) -> dict[str, Any]:
    """Method facts from the analysis plus the config fields that matter; empty ones dropped."""
    details = dict(analysis.details)
    if analysis.saved_modules:
        details["modules_to_save"] = analysis.saved_modules
    elif get_names(config, "modules_to_save"):
        details["modules_to_save_config"] = config["modules_to_save"]
    if analysis.bias_modules:
        details["bias"] = config.get("bias")
        details["bias_modules"] = sorted({m.rsplit(".", 1)[-1] for m in analysis.bias_modules})
    details["layers"] = sorted(
        {int(n) for m in analysis.modules for n in re.findall(r"\.(\d+)(?=\.|$)", m)[:1]}
    )
    for name in _CONFIG_DETAILS:
        details.setdefault(name, config.get(name))
    init = config.get("init_lora_weights", True)
    if init is not True:
        details["init_lora_weights"] = init  # PiSSA, OLoRA, LoftQ...: tied to a changed base
    details["peft_version"] = config.get("peft_version") or metadata.get("peft_version")
    # Fields of a newer PEFT: accepted, named here (the CLI warns), and merging refuses the
    # ones that are on (compose.peft_config.merge_refusal).
    details["unknown_config_keys"] = unknown_keys(config)
    return {k: v for k, v in details.items() if not (v is None or v is False or v in ({}, [], ""))}
