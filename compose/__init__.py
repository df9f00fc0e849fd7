"""Adapter math and the files it reads and writes: merges, composites, the deploy step.

``compose.load(base_model, folder)`` returns a ready model for any adapter folder, stack or
ensemble. Names load on first use, so importing ``compose`` never imports torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EnsembleModel", "load"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from compose.composites import load_composed

        return load_composed
    if name == "EnsembleModel":
        from compose.composites import EnsembleModel

        return EnsembleModel
    raise AttributeError(f"module 'compose' has no attribute {name!r}")
