"""Pydantic models and errors shared by every layer. No torch, no I/O.

Names are loaded on first use (PEP 562): building the pydantic models costs ~100 ms, which
read commands such as ``hub ls --json`` never need to pay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "PROMPT_METHODS": "schemas.card",
    "AdapterCard": "schemas.card",
    "FileEntry": "schemas.card",
    "InferenceOverhead": "schemas.card",
    "InspectedAdapter": "schemas.card",
    "Lineage": "schemas.card",
    "Method": "schemas.card",
    "Metric": "schemas.card",
    "parse_tags": "schemas.card",
    "AdapterRef": "schemas.refs",
    "validate_alias": "schemas.refs",
    "validate_repo_id": "schemas.refs",
    "Recipe": "schemas.recipe",
}
_ERRORS = (
    "AdapterNotFound", "AliasConflict", "AuthError", "ForeignFormat", "HubError",
    "IncompatibleAdapters",
    "InsufficientDiskSpace", "InvalidAdapter", "InvalidArgument", "InvalidName", "InvalidRecipe",
    "OutputExists", "RevisionNotFound", "StoreCorrupted", "UnsafeFormat",
)  # fmt: skip
_EXPORTS.update(dict.fromkeys(_ERRORS, "schemas.errors"))

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'schemas' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


if TYPE_CHECKING:
    from schemas.card import (
        PROMPT_METHODS,
        AdapterCard,
        FileEntry,
        InferenceOverhead,
        InspectedAdapter,
        Lineage,
        Method,
        Metric,
        parse_tags,
    )
    from schemas.errors import (
        AdapterNotFound,
        AliasConflict,
        AuthError,
        ForeignFormat,
        HubError,
        IncompatibleAdapters,
        InsufficientDiskSpace,
        InvalidAdapter,
        InvalidArgument,
        InvalidName,
        InvalidRecipe,
        OutputExists,
        RevisionNotFound,
        StoreCorrupted,
        UnsafeFormat,
    )
    from schemas.recipe import Recipe
    from schemas.refs import AdapterRef, validate_alias, validate_repo_id
