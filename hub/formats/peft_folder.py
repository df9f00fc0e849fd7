"""The two ends every conversion shares: the base model it is for, and the PEFT LoRA folder
it writes (through PEFT's own ``LoraConfig``, so ``PeftModel.from_pretrained`` reads it)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from schemas.errors import InvalidAdapter, InvalidArgument


def base_config(base: Path) -> dict[str, Any]:
    """The ``config.json`` of the base model folder ``base``.

    Raises:
        InvalidArgument: no such folder, or no readable ``config.json`` in it.
    """
    path = Path(base) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InvalidArgument(
            f"--base {base}: no readable config.json ({type(error).__name__}); give the folder"
            " of the base model (config.json and its safetensors)"
        ) from None
    if not isinstance(config, dict):
        raise InvalidArgument(f"--base {base}: config.json must hold a JSON object")
    return config


def base_shapes(base: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape over the base folder's safetensors headers ({} when it has none)."""
    from hub.inspect.safetensors_header import read_safetensors_header

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(Path(base).glob("*.safetensors")):
        tensors, _ = read_safetensors_header(file)
        shapes.update({key: info.shape for key, info in tensors.items()})
    return shapes


def check_against_base(
    shapes: dict[str, tuple[int, ...]], module: str, in_features: int, out_features: int, key: str
) -> None:
    """``module`` must be a linear layer of the base with these features (when shapes known).

    Raises:
        InvalidAdapter: the base has no ``<module>.weight``, or its shape differs.
    """
    if not shapes:
        return
    weight = shapes.get(f"{module}.weight")
    if weight is None:
        raise InvalidAdapter(
            f"tensor {key!r} adapts {module!r}, which the base model does not have"
            f" (no {module}.weight in its safetensors): is --base the model it was trained on?",
            module=module,
            tensor=key,
        )
    if tuple(weight) != (out_features, in_features):
        raise InvalidAdapter(
            f"tensor {key!r} adapts {module!r} as a {in_features} -> {out_features} layer,"
            f" but the base's {module}.weight has shape {list(weight)}",
            module=module,
            tensor=key,
        )


def lora_targets(modules: list[str]) -> dict[str, Any]:
    """PEFT config fields that select exactly ``modules`` (dotted paths in the base model).

    When every module sits in a numbered layer and each layer has the same set, that set's
    names plus ``layers_to_transform`` (mlx-lm adapts only the last ``num_layers`` layers);
    otherwise the full module paths, which PEFT matches exactly.
    """
    per_layer: dict[int, set[str]] = {}
    for module in modules:
        match = re.fullmatch(r"(?:.*\.)?layers\.(\d+)\.(.+)", module)
        if match is None:
            return {"target_modules": sorted(modules)}
        per_layer.setdefault(int(match[1]), set()).add(match[2])
    names = next(iter(per_layer.values()))
    if any(s != names for s in per_layer.values()):
        return {"target_modules": sorted(modules)}
    return {
        "target_modules": sorted(names),
        "layers_to_transform": sorted(per_layer),
        "layers_pattern": "layers",
    }


def write_lora_folder(
    dest: Path,
    tensors: dict[str, Any],
    *,
    rank: int,
    alpha: float,
    dropout: float,
    modules: list[str],
    base_model: str | None,
    readme: str,
) -> None:
    """Write a PEFT LoRA folder into the empty folder ``dest``.

    Args:
        tensors: PEFT keys (``base_model.model.<module>.lora_A.weight``) -> tensors.
        modules: the adapted modules' dotted paths, for ``target_modules``.
        readme: the README.md text (where the adapter came from).
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=rank,
        # PEFT scales by lora_alpha / r in float; an mlx-lm scale need not make it integral.
        lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,  # type: ignore[arg-type]
        lora_dropout=dropout,
        base_model_name_or_path=base_model,
        **lora_targets(modules),
    )
    config.save_pretrained(str(dest))
    contiguous = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(contiguous, str(dest / "adapter_model.safetensors"), metadata={"format": "pt"})
    (dest / "README.md").write_text(readme, encoding="utf-8")
