"""Safe conversion of pickle adapters (``adapter_model.bin``) to safetensors.

The hub never unpickles files implicitly. This explicit step uses
``torch.load(weights_only=True)``, which only rebuilds tensors and refuses any other object.
"""

from __future__ import annotations

import os
import shutil
import uuid
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
