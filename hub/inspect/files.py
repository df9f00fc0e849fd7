"""Which files of a folder are the adapter's, and which are a training run's leftovers.

An adapter folder is what PEFT's ``save_pretrained`` writes (``adapter_config.json``,
``adapter_model.safetensors``, ``README.md``, one subfolder per extra adapter) plus what is
saved beside it to use it (tokenizer and processor files, a chat template, notes). ``hub push``
stores all of that and leaves out what a trainer saves only to *resume training*, which is
many times the adapter's size and mostly pickles:

- Hugging Face ``Trainer`` (``_save_checkpoint``, ``save_model``): ``training_args.bin``,
  ``trainer_state.json``, ``optimizer.pt`` / ``optimizer.bin``, ``scheduler.pt``,
  ``scaler.pt``, ``rng_state.pth`` / ``rng_state_<rank>.pth``; FSDP and DeepSpeed state
  (``optimizer_<N>/``, ``pytorch_model_fsdp_<N>/``, ``global_step<N>/``, ``latest``,
  ``zero_to_fp32.py``); the ``checkpoint-<step>/`` folders of ``save_steps`` (pushed as
  versions with ``hub push OUTPUT_DIR --checkpoints``); ``runs/`` (TensorBoard logs).
- torchtune: ``recipe_state/`` (``recipe_state.pt``), and ``adapter_model.pt`` when an
  ``adapter_model.safetensors`` is beside it (torchtune writes both: the ``.pt`` is the same
  weights again, in torchtune's own names, as a pickle).

Hidden files and folders and ``__pycache__`` are left out too (``hub.registry.adapter_files``).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

TRAINING_FILES = frozenset(
    {
        "training_args.bin",
        "trainer_state.json",
        "optimizer.pt",
        "optimizer.bin",
        "scheduler.pt",
        "scaler.pt",
        "rng_state.pth",
        "latest",
        "zero_to_fp32.py",
    }
)
"""File names a trainer saves to resume a run (left out wherever they are)."""

_TRAINING_FILE = re.compile(r"rng_state_\d+\.pth")
_TRAINING_DIR = re.compile(
    r"checkpoint-\d+|runs|recipe_state|global_step\d+|optimizer_\d+|pytorch_model_fsdp_\d+"
)
CHECKPOINT_DIR = re.compile(r"checkpoint-(?P<step>\d+)")
"""The Trainer's ``{PREFIX_CHECKPOINT_DIR}-{global_step}`` folders."""


def is_training_output(rel: str, folder: Path) -> bool:
    """True when ``rel`` (a posix path inside ``folder``) is training state, not adapter.

    Example:
        >>> is_training_output("checkpoint-500/adapter_model.safetensors", Path("out"))
        True
        >>> is_training_output("tokenizer.json", Path("out"))
        False
    """
    parts = PurePosixPath(rel).parts
    if any(_TRAINING_DIR.fullmatch(part) for part in parts[:-1]):
        return True
    name = parts[-1]
    if name in TRAINING_FILES or _TRAINING_FILE.fullmatch(name):
        return True
    if name == "adapter_model.pt":
        return (folder / PurePosixPath(rel).parent / "adapter_model.safetensors").is_file()
    return False


def training_outputs(folder: Path) -> list[str]:
    """What ``hub push`` leaves out of ``folder``: each left-out folder once (``runs/``) and
    each left-out file, as posix paths, sorted; hidden entries are not listed."""
    out: set[str] = set()
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        for depth, part in enumerate(rel.parts[:-1]):
            if _TRAINING_DIR.fullmatch(part):
                out.add("/".join(rel.parts[: depth + 1]) + "/")
                break
        else:
            if path.is_dir() and _TRAINING_DIR.fullmatch(rel.parts[-1]):
                out.add(rel.as_posix() + "/")
            elif path.is_file() and is_training_output(rel.as_posix(), folder):
                out.add(rel.as_posix())
    return sorted(out)


def checkpoint_folders(folder: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the ``checkpoint-<step>/`` folders directly in ``folder``, in step
    order (numeric: ``checkpoint-10`` after ``checkpoint-9``)."""
    found = []
    if folder.is_dir():
        for child in folder.iterdir():
            match = CHECKPOINT_DIR.fullmatch(child.name)
            if match and child.is_dir():
                found.append((int(match["step"]), child))
    return sorted(found)
