"""``hub convert``: adapters the hub does not store as they are, turned into PEFT folders.

- PEFT's pickle ``adapter_model.bin`` -> ``adapter_model.safetensors`` (``convert_bin_adapter``).
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

from schemas.errors import InvalidAdapter, OutputExists


def convert_bin_adapter(folder: Path, output: Path | None = None) -> Path:
    """Write ``output`` (default ``<folder>-safetensors``): the folder with its
    ``adapter_model.bin`` replaced by an equivalent ``adapter_model.safetensors``.

    Raises:
        InvalidAdapter: no ``adapter_model.bin``, or it holds something other than tensors.
        OutputExists: ``output`` exists.
    """
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    source = folder / "adapter_model.bin"
    if not source.is_file():
        raise InvalidAdapter(f"{folder}: no adapter_model.bin to convert", path=str(folder))
    dest = Path(output) if output is not None else folder.with_name(folder.name + "-safetensors")
    if dest.exists():
        raise OutputExists(f"{dest} already exists (choose another -o)", path=str(dest))
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
    staging = dest.parent / f".{dest.name}.hub-{uuid.uuid4().hex[:8]}.incomplete"
    staging.mkdir(parents=True)
    try:
        for item in folder.iterdir():
            if item.name == "adapter_model.bin" or item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, staging / item.name)
            else:
                shutil.copy2(item, staging / item.name)
        # Tensors that share storage (tied weights) must be cloned for safetensors.
        tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
        save_file(tensors, staging / "adapter_model.safetensors", metadata={"format": "pt"})
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


@dataclass(frozen=True)
class Converted:
    path: Path
    source: str
    """``peft-bin``, ``mlx-lm`` or ``torchtune``."""
    summary: str = ""


def convert_adapter(
    folder: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    base: str | os.PathLike[str] | None = None,
    alpha: float | None = None,
) -> Converted:
    """Convert the adapter ``folder`` into a PEFT folder that ``hub push`` takes.

    The format is recognised from the files: PEFT's pickle ``adapter_model.bin`` (written as
    ``<folder>-safetensors``), an mlx-lm or a torchtune LoRA adapter (``<folder>-peft``).
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
    from compose.staging import staged_folder
    from hub.formats import detect

    folder = Path(folder)
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
