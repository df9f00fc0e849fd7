"""mlx-lm LoRA adapters (``mlx_lm.lora``) -> PEFT LoRA folders.

mlx-lm's ``LoRALinear`` stores ``lora_a`` of shape (in, r) and ``lora_b`` of shape (r, out) and
computes ``y = linear(x) + scale * ((dropout(x) @ lora_a) @ lora_b)``. PEFT's LoRA stores
``lora_A.weight`` (r, in) and ``lora_B.weight`` (out, r) and computes
``y = base(x) + (lora_alpha / r) * lora_B(lora_A(dropout(x)))``. So ``lora_A = lora_a.T``,
``lora_B = lora_b.T`` and ``lora_alpha = scale * r``; the numbers are copied, never rounded.

The key of a module is its path in mlx-lm's model, which mirrors the Hugging Face one
(``model.layers.3.self_attn.q_proj``); PEFT's is ``base_model.model.`` + that path. mlx-lm
adapts the last ``num_layers`` layers only, which ``layers_to_transform`` records.

Not converted (refused with the reason): DoRA (``fine_tune_type: dora``), full fine-tunes,
embedding LoRA and mixture-of-experts ``SwitchLinear`` LoRA (3-D ``lora_a``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from hub.formats import MLX_WEIGHTS
from hub.formats.peft_folder import base_shapes, check_against_base, write_lora_folder
from schemas.errors import ForeignFormat, InvalidAdapter

_CONFIG = "adapter_config.json"
_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<which>[ab])")


def convert_mlx(folder: Path, dest: Path, base: Path | None) -> str:
    """Write the PEFT form of the mlx-lm adapter ``folder`` into the empty folder ``dest``.

    Args:
        base: the base model folder; when given, every adapted module is checked against its
            safetensors (name and shape) and it becomes ``base_model_name_or_path``. Else
            the config's ``model`` is used.

    Returns:
        A one-line summary (``r=8, lora_alpha=160.0 (scale 20.0)``).

    Raises:
        ForeignFormat: DoRA, full fine-tune, embedding or expert LoRA (not converted).
        InvalidAdapter: a config field or a tensor that is missing or has the wrong shape.
    """
    from safetensors.torch import load_file

    config = _read_config(folder)
    kind = config.get("fine_tune_type", "lora")
    if kind != "lora":
        raise ForeignFormat(
            f"{folder / _CONFIG}: fine_tune_type is {kind!r}; hub convert turns mlx-lm LoRA"
            " (fine_tune_type 'lora') into PEFT LoRA, and nothing else",
            format="mlx-lm",
            field="fine_tune_type",
        )
    params = config.get("lora_parameters")
    if not isinstance(params, dict):
        raise InvalidAdapter(
            f"{folder / _CONFIG}: field 'lora_parameters' ({{rank, scale, dropout}}) is missing",
            field="lora_parameters",
        )
    rank = _number(params, "rank", folder, integer=True)
    scale = _number(params, "scale", folder)
    dropout = _number(params, "dropout", folder) if "dropout" in params else 0.0

    weights = folder / MLX_WEIGHTS
    if not weights.is_file():
        raise InvalidAdapter(f"{folder}: no {MLX_WEIGHTS}", path=str(folder))
    state = load_file(str(weights))
    shapes = base_shapes(base) if base is not None else {}
    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in state.items():
        match = _KEY.fullmatch(key)
        if match is None:
            raise InvalidAdapter(
                f"{MLX_WEIGHTS}: tensor {key!r} is not a LoRA matrix (<module>.lora_a or"
                " .lora_b); only mlx-lm LoRA adapters are converted",
                tensor=key,
            )
        if tensor.dim() != 2:
            raise ForeignFormat(
                f"{MLX_WEIGHTS}: tensor {key!r} has shape {list(tensor.shape)}: mixture-of-"
                "experts (SwitchLinear) LoRA is not converted",
                format="mlx-lm",
                tensor=key,
            )
        if "embed" in match["module"].rsplit(".", 1)[-1]:
            raise ForeignFormat(
                f"{MLX_WEIGHTS}: tensor {key!r} is an embedding LoRA, which is not converted",
                format="mlx-lm",
                tensor=key,
            )
        pairs.setdefault(match["module"], {})[match["which"]] = tensor

    tensors: dict[str, Any] = {}
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"a", "b"}:
            missing = "lora_b" if "a" in pair else "lora_a"
            raise InvalidAdapter(
                f"{MLX_WEIGHTS}: module {module!r} has no {missing}", module=module
            )
        lora_a, lora_b = pair["a"], pair["b"]  # (in, r), (r, out)
        if lora_a.shape[1] != rank or lora_b.shape[0] != rank:
            raise InvalidAdapter(
                f"{MLX_WEIGHTS}: module {module!r} has lora_a {list(lora_a.shape)} and lora_b"
                f" {list(lora_b.shape)}, but lora_parameters says rank {rank}"
                " (expected (in, rank) and (rank, out))",
                module=module,
            )
        check_against_base(shapes, module, lora_a.shape[0], lora_b.shape[1], f"{module}.lora_a")
        tensors[f"base_model.model.{module}.lora_A.weight"] = lora_a.T
        tensors[f"base_model.model.{module}.lora_B.weight"] = lora_b.T
    if not tensors:
        raise InvalidAdapter(f"{MLX_WEIGHTS}: no LoRA tensors", path=str(weights))

    alpha = scale * rank
    model = config.get("model")
    base_model = str(base) if base is not None else model if isinstance(model, str) else None
    write_lora_folder(
        dest,
        tensors,
        rank=int(rank),
        alpha=alpha,
        dropout=dropout,
        modules=sorted(pairs),
        base_model=base_model,
        readme=(
            f"---\nlibrary_name: peft\ntags: [lora, mlx-lm, hub-convert]\n---\n\n"
            f"LoRA adapter converted from mlx-lm ({MLX_WEIGHTS}) by `hub convert`:"
            f" rank {int(rank)}, scale {scale:g} (lora_alpha {alpha:g}),"
            f" {len(pairs)} modules.\n"
        ),
    )
    return f"r={int(rank)}, lora_alpha={alpha:g} (mlx-lm scale {scale:g})"


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / _CONFIG).read_text(encoding="utf-8"))
    except OSError:
        raise InvalidAdapter(
            f"{folder}: no {_CONFIG} (mlx-lm writes it beside {MLX_WEIGHTS})", path=str(folder)
        ) from None
    except ValueError as error:
        raise InvalidAdapter(f"{folder / _CONFIG} is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{folder / _CONFIG} must hold a JSON object")
    return config


def _number(params: dict[str, Any], name: str, folder: Path, integer: bool = False) -> Any:
    value = params.get(name)
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if not ok or isinstance(value, bool) or value < (1 if integer else 0):  # type: ignore[operator]
        kind = "a positive integer" if integer else "a number"
        raise InvalidAdapter(
            f"{folder / _CONFIG}: lora_parameters.{name} must be {kind}, got {value!r}",
            field=f"lora_parameters.{name}",
        )
    return value if integer else float(value)  # type: ignore[arg-type]
