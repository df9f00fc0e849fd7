"""How PEFT matches module names against config patterns (no torch; shared by inspect and
compose so both read a config exactly as PEFT does)."""

from __future__ import annotations

import re
from typing import Any


def pattern_value(pattern: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key matching the module's name
    suffix (``(.*\\.)?KEY$``) wins, else the default."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def module_matches(module: str, names: list[str] | str | None) -> bool:
    """Whether ``module`` is selected by a target list / regex, as PEFT decides it."""
    if names is None:
        return False
    if isinstance(names, str):
        if names == "all-linear":
            return True
        return re.fullmatch(names, module) is not None
    return any(module == name or module.endswith("." + name) for name in names)
