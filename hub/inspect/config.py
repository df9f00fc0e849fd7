"""Reading ``adapter_config.json`` with errors that name the field at fault.

Like PEFT, unknown keys are tolerated (configs grow with every PEFT release); the card lists
them (``compose.peft_config.unknown_keys``) and merging refuses those that are on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from compose.peft_patterns import module_matches, pattern_value
from hub.folders import read_regular
from schemas.errors import InvalidAdapter
from schemas.methods import METHODS

__all__ = ["module_matches", "pattern_value"]

CONFIG = "adapter_config.json"
_MAX_CONFIG_BYTES = 16 << 20
"""PEFT's configs are a few KB; anything this big is not one (and is never read whole)."""


def load_config(folder: Path) -> dict[str, Any]:
    """Parse ``folder/adapter_config.json``; raise ``InvalidAdapter`` naming what is wrong."""
    path = folder / CONFIG
    if not path.is_file():
        raise InvalidAdapter(
            f"{folder}: no {CONFIG} (is this a PEFT adapter folder?)",
            path=str(folder),
        )
    data = read_regular(path, _MAX_CONFIG_BYTES + 1)
    if data is None:
        raise InvalidAdapter(f"{path} is not a regular file", path=str(path))
    if len(data) > _MAX_CONFIG_BYTES:
        raise InvalidAdapter(
            f"{CONFIG} is over {_MAX_CONFIG_BYTES >> 20} MiB: not an adapter config",
            path=str(path),
        )
    try:
        config = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidAdapter(f"{CONFIG} is not UTF-8 text", path=str(path)) from None
    except json.JSONDecodeError as error:
        raise InvalidAdapter(
            f"{CONFIG} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})",
            path=str(path),
        ) from None
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{CONFIG} must hold a JSON object", path=str(path))
    return config


def method_of(config: dict[str, Any]) -> str:
    """The card's method: the config's ``peft_type`` lowercased, if PEFT has such a type."""
    peft_type = config.get("peft_type")
    if peft_type is None:
        raise InvalidAdapter(f"{CONFIG}: field 'peft_type' is missing", field="peft_type")
    method = peft_type.lower() if isinstance(peft_type, str) else None
    if method not in METHODS:
        raise InvalidAdapter(
            f"{CONFIG}: field 'peft_type' is {peft_type!r}, which is no PEFT type this hub knows"
            f" (it knows the {len(METHODS)} types of peft 0.21.2, from {min(METHODS).upper()}"
            f" to {max(METHODS).upper()}: check the field, or upgrade the hub)",
            field="peft_type",
        )
    return method


def get_int(config: dict[str, Any], field: str, default: int | None = None) -> int | None:
    value = config.get(field, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAdapter(
            f"{CONFIG}: field {field!r} must be an integer, got {value!r}", field=field
        )
    return value


def get_float(config: dict[str, Any], field: str, default: float | None = None) -> float | None:
    value = config.get(field, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidAdapter(
            f"{CONFIG}: field {field!r} must be a number, got {value!r}", field=field
        )
    return float(value)


def get_bool(config: dict[str, Any], field: str) -> bool:
    value = config.get(field)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidAdapter(
            f"{CONFIG}: field {field!r} must be true or false, got {value!r}", field=field
        )
    return value


def get_pattern(config: dict[str, Any], field: str) -> dict[str, Any]:
    value = config.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidAdapter(
            f"{CONFIG}: field {field!r} must be an object, got {value!r}", field=field
        )
    return value


def get_names(config: dict[str, Any], field: str) -> list[str] | str | None:
    """A module-name list or a regex string (``target_modules``, ``modules_to_save``...)."""
    value = config.get(field)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise InvalidAdapter(
        f"{CONFIG}: field {field!r} must be a list of module names or a regex, got {value!r}",
        field=field,
    )


def matches(module: str, names: list[str] | str | None, field: str) -> bool:
    """``module_matches``, with a malformed regex in the config reported as the config's fault."""
    try:
        return module_matches(module, names)
    except re.error as error:
        raise InvalidAdapter(
            f"{CONFIG}: field {field!r} is not a valid regular expression ({error})", field=field
        ) from None


def pattern_key(pattern: dict[str, Any], module: str, field: str) -> str | None:
    """The key of a LoRA-style ``rank_pattern`` / ``alpha_pattern`` that applies to ``module``.

    Same rule as PEFT's ``get_pattern_key``: the first key ``k`` with ``(.*\\.)?k$`` matching
    the module's full name.
    """
    for key in pattern:
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return key
        except re.error as error:
            raise InvalidAdapter(
                f"{CONFIG}: key {key!r} of field {field!r} is not a valid regular expression"
                f" ({error})",
                field=field,
            ) from None
    return None
