"""Read an adapter folder into a card, without torch.

``inspect_adapter`` parses ``adapter_config.json`` and the safetensors header, checks that the
tensors agree with the config (ranks, targets, shapes), scans the data for NaN/Inf, and counts
parameters. It never unpickles anything: a folder with only ``adapter_model.bin`` is refused
with a pointer to ``hub convert``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hub.inspect.config import get_names, load_config, method_of
from hub.inspect.methods import (
    PROMPT_METHODS,
    WEIGHTS,
    Analysis,
    analyse_adalora,
    analyse_boft,
    analyse_ia3,
    analyse_loha_lokr,
    analyse_lora,
    analyse_oft,
    analyse_prompt,
    analyse_vera,
    check_targets,
    group_by_module,
)
from hub.inspect.params import base_param_count
from hub.inspect.safetensors_header import (
    TensorInfo,
    find_nonfinite,
    read_safetensors_header,
)
from schemas.card import InferenceOverhead, InspectedAdapter
from schemas.errors import InvalidAdapter, UnsafeFormat

__all__ = ["TensorInfo", "inspect_adapter", "read_safetensors_header"]


def inspect_adapter(
    path: str | Path,
    *,
    allow_nonfinite: bool = False,
    base_config: dict[str, Any] | None = None,
) -> InspectedAdapter:
    """Read the adapter folder ``path`` into an ``InspectedAdapter`` (a card without repo).

    Args:
        path: a folder written by PEFT's ``save_pretrained``.
        allow_nonfinite: accept tensors holding NaN or Inf.
        base_config: the base model's ``config.json``, for ``params_base`` when the base is not
            a local folder named by ``base_model_name_or_path``.

    Raises:
        InvalidAdapter: missing/malformed config, corrupt or truncated safetensors, shapes that
            contradict the config, NaN/Inf values.
        UnsafeFormat: only a pickle ``adapter_model.bin`` is present.

    Example:
        >>> card = inspect_adapter("out/sql-lora")                  # doctest: +SKIP
        >>> card.method, card.rank, card.target_modules
        ('lora', 8, ['q_proj', 'v_proj'])
    """
    folder = Path(path)
    if (folder / "composite.json").is_file() and not (folder / "adapter_config.json").exists():
        from hub.inspect.composite import inspect_composite

        return inspect_composite(folder, inspect_adapter, allow_nonfinite)
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
        raise InvalidAdapter(f"{folder}: no {WEIGHTS}", path=str(folder))
    tensors, metadata = read_safetensors_header(weights)

    analysis, frozen = _analyse(method, config, tensors, weights)
    if not allow_nonfinite:
        bad = find_nonfinite(weights, tensors)
        if bad is not None:
            raise InvalidAdapter(
                f"{WEIGHTS}: tensor {bad!r} contains NaN or Inf values"
                " (push with --allow-nonfinite to accept it)",
                tensor=bad,
            )

    params_trainable = sum(t.numel for k, t in tensors.items() if k not in frozen)
    base_model = config.get("base_model_name_or_path")
    params_base = base_param_count(base_model, base_config)
    targets = sorted({m.rsplit(".", 1)[-1] for m in analysis.modules + analysis.saved_modules})
    details = {k: v for k, v in analysis.details.items() if v not in (None, {}, [], False)}
    if analysis.saved_modules:
        details["modules_to_save"] = analysis.saved_modules
    layers = sorted({int(n) for m in analysis.modules for n in re.findall(r"\.(\d+)\.", m)})
    if layers:
        details["layers"] = layers
    peft_version = config.get("peft_version") or metadata.get("peft_version")
    if peft_version:
        details["peft_version"] = peft_version
    prompt = method in PROMPT_METHODS
    return InspectedAdapter(
        base_model=base_model if isinstance(base_model, str) else None,
        base_revision=config.get("revision") if isinstance(config.get("revision"), str) else None,
        method=method,
        variant=analysis.variant,
        rank=analysis.rank,
        alpha=analysis.alpha,
        target_modules=[] if prompt else targets,
        task_type=config.get("task_type") if isinstance(config.get("task_type"), str) else None,
        params_trainable=params_trainable,
        params_base=params_base,
        params_fraction=params_trainable / params_base if params_base else None,
        size_bytes=sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        dtypes=sorted({t.dtype.lower() for t in tensors.values()}),
        inference_overhead=InferenceOverhead(
            none_when_merged=not prompt,
            extra_tokens=analysis.extra_tokens,
            extra_layers=0 if prompt else len(analysis.modules),
        ),
        details=details,
        description=readme_description(folder / "README.md"),
    )


def _analyse(
    method: str, config: dict[str, Any], tensors: dict[str, TensorInfo], weights: Path
) -> tuple[Analysis, set[str]]:
    if method in PROMPT_METHODS:
        return analyse_prompt(method, config, tensors), set()
    groups, saved, shared = group_by_module(method, config, tensors)
    if not groups:
        raise InvalidAdapter(f"{WEIGHTS}: no {method} tensors found", path=str(weights))
    check_targets(config, sorted(groups))
    if method == "lora":
        analysis = analyse_lora(config, groups)
    elif method == "adalora":
        analysis = analyse_adalora(config, groups, weights)
    elif method == "ia3":
        analysis = analyse_ia3(config, groups)
    elif method in ("loha", "lokr"):
        analysis = analyse_loha_lokr(method, config, groups)
    elif method == "oft":
        analysis = analyse_oft(config, groups)
    elif method == "boft":
        analysis = analyse_boft(config, groups)
    else:
        analysis = analyse_vera(config, groups)
    analysis.modules = sorted(groups)
    analysis.saved_modules = saved
    modules_to_save = get_names(config, "modules_to_save")
    if modules_to_save and not saved:
        analysis.details["modules_to_save_config"] = modules_to_save
    return analysis, shared


_PEFT_TEMPLATE_MARKERS = ("# Model Card for Model ID", "[More Information Needed]")


def readme_description(readme: Path) -> str | None:
    """The README's front-matter ``description:``, else its first prose paragraph.

    PEFT's untouched model-card template yields None.
    """
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    body = text
    if text.startswith("---"):
        parts = text.split("---", 2)
        if len(parts) == 3:
            body = parts[2]
            for line in parts[1].splitlines():
                key, sep, value = line.partition(":")
                if sep and key.strip() == "description" and value.strip():
                    return value.strip().strip("\"'")
    if any(marker in body for marker in _PEFT_TEMPLATE_MARKERS):
        return None
    for paragraph in re.split(r"\n\s*\n", body):
        lines = [ln.strip() for ln in paragraph.strip().splitlines()]
        if lines and not lines[0].startswith(("#", "<", "|", "```", "-", "*", "!")):
            return " ".join(lines)[:1000]
    return None
