"""``hub convert``: adapters the hub does not store as they are, turned into PEFT folders.

- PEFT's pickle ``adapter_model.bin`` -> ``adapter_model.safetensors`` (``convert_bin_adapter``),
  and AdapterHub's ``pytorch_adapter.bin`` / ``pytorch_model_head.bin`` -> ``adapter.safetensors``
  / ``model_head.safetensors`` (the names ``adapters`` reads with ``use_safetensors=True``).
- mlx-lm and torchtune LoRA adapters -> PEFT LoRA folders (``hub.formats``).

The hub never unpickles files implicitly. This explicit step uses
``torch.load(weights_only=True)``, which only rebuilds tensors and refuses any other object.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.errors import InvalidAdapter, OutputExists


def convert_bin_adapter(
    folder: Path, output: Path | None = None, pickles: dict[str, str] | None = None
) -> Path:
    """Write ``output`` (default ``<folder>-safetensors``): the folder with its pickle weights
    replaced by equivalent safetensors files.

    Args:
        pickles: pickle file name -> safetensors name; default PEFT's ``adapter_model.bin``
            -> ``adapter_model.safetensors``. AdapterHub's are ``hub.formats.adapterhub.
            PICKLE_TO_SAFETENSORS`` (adapter and head); the ones present are converted.

    Raises:
        InvalidAdapter: none of the pickles, or one holds something other than tensors.
        OutputExists: ``output`` exists.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    pairs = pickles or {"adapter_model.bin": "adapter_model.safetensors"}
    sources = {name: folder / name for name in pairs if (folder / name).is_file()}
    if not sources:
        raise InvalidAdapter(f"{folder}: no {' or '.join(pairs)} to convert", path=str(folder))
    dest = Path(output) if output is not None else folder.with_name(folder.name + "-safetensors")
    if dest.exists():
        raise OutputExists(f"{dest} already exists (choose another -o)", path=str(dest))
    states = {name: _load_tensors(source) for name, source in sources.items()}
    staging = dest.parent / f".{dest.name}.hub-{uuid.uuid4().hex[:8]}.incomplete"
    staging.mkdir(parents=True)
    try:
        for item in folder.iterdir():
            if item.name in sources or item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, staging / item.name)
            else:
                shutil.copy2(item, staging / item.name)
        for name, state in states.items():
            # Tensors that share storage (tied weights, AdapterHub's prefix pool saved under
            # every layer) must be cloned for safetensors.
            tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
            save_file(tensors, staging / pairs[name], metadata={"format": "pt"})
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def _load_tensors(source: Path) -> dict[str, Any]:
    """The plain tensor dict of a pickle checkpoint, loaded with ``weights_only=True``."""
    import torch

    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler's refusals come in many types
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise InvalidAdapter(
            f"{source}: not a plain tensor checkpoint, refusing to load it ({first_line})",
            path=str(source),
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise InvalidAdapter(f"{source}: expected a dict of tensors", path=str(source))
    return state


@dataclass(frozen=True)
class Converted:
    path: Path
    source: str
    """``peft-bin``, ``adapters-bin`` (AdapterHub's pickles), ``mlx-lm`` or ``torchtune``."""
    summary: str = ""


def convert_adapter(
    folder: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    base: str | os.PathLike[str] | None = None,
    alpha: float | None = None,
) -> Converted:
    """Convert the adapter ``folder`` into a PEFT folder that ``hub push`` takes.

    The format is recognised from the files: PEFT's pickle ``adapter_model.bin`` or
    AdapterHub's ``pytorch_adapter.bin`` (written as ``<folder>-safetensors``), an mlx-lm or
    a torchtune LoRA adapter (``<folder>-peft``).
    The output folder appears whole or not at all.

    Args:
        output: the folder to write (must not exist).
        base: the base model folder: required for torchtune (architecture), optional for
            mlx-lm (checks every module's name and shape, and becomes the base model name).
        alpha: torchtune without ``adapter_config.json``: the LoRA alpha it was trained with.

    Raises:
        InvalidAdapter, ForeignFormat: nothing to convert, or what cannot be converted.
        InvalidArgument: a missing or contradicting ``base`` / ``alpha``.
        OutputExists: ``output`` exists.

    Example:
        >>> convert_adapter("mlx-out/adapters", "adapters-peft")           # doctest: +SKIP
        Converted(path=PosixPath('adapters-peft'), source='mlx-lm', summary='r=8, ...')
    """
    from compose.adapterhub import PICKLE_TO_SAFETENSORS, WEIGHTS, is_adapterhub_folder
    from compose.staging import staged_folder
    from hub.formats import detect

    folder = Path(folder)
    if folder.is_dir() and is_adapterhub_folder(folder):
        if (folder / WEIGHTS).is_file():
            raise InvalidAdapter(
                f"{folder} is already an AdapterHub save with safetensors ({WEIGHTS}): push it"
                f" as it is with `hub push {folder}`",
                path=str(folder),
            )
        dest = convert_bin_adapter(
            folder, None if output is None else Path(output), PICKLE_TO_SAFETENSORS
        )
        return Converted(dest, "adapters-bin")
    fmt = detect(folder) if folder.is_dir() else None
    if fmt is None:
        if (folder / "adapter_model.safetensors").is_file():
            raise InvalidAdapter(
                f"{folder} is already a PEFT folder (adapter_model.safetensors): push it as it"
                f" is with `hub push {folder}`",
                path=str(folder),
            )
        if not (folder / "adapter_model.bin").is_file():
            raise InvalidAdapter(
                f"{folder}: nothing to convert (no PEFT adapter_model.bin, no mlx-lm"
                " adapters.safetensors, no torchtune adapter_model.pt)",
                path=str(folder),
            )
        dest = convert_bin_adapter(folder, None if output is None else Path(output))
        return Converted(dest, "peft-bin")
    dest = Path(output) if output is not None else folder.with_name(folder.name + "-peft")
    if dest.exists():
        raise OutputExists(f"{dest} already exists (choose another -o)", path=str(dest))
    base_path = Path(base) if base is not None else None
    with staged_folder(dest, force=False) as staging:
        if fmt == "mlx-lm":
            from hub.formats.mlx import convert_mlx

            summary = convert_mlx(folder, staging, base_path)
        else:
            from hub.formats.torchtune import convert_torchtune

            summary = convert_torchtune(folder, staging, base_path, alpha)
    return Converted(dest, fmt, summary)
