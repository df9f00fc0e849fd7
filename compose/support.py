"""The README's table of methods and variants, rendered from the code's own facts.

Rows and their export facts come from ``schemas.methods.ROWS``; the compose column from the
operators' declared input methods (``compose.operators.OPERATORS``). ``tests/schemas/
test_methods.py`` compares the README with ``support_table()``, so the table cannot drift.
"""

from __future__ import annotations

from schemas.methods import ROWS, Row

_MERGE = {"streamed": "yes", "peft": "yes (PEFT, in memory)", "none": "no"}
HEADER = (
    "| method | card | push / pull | merge-export (safetensors) | gguf, fp8 | gguf-lora"
    " | vllm-bundle | compose | notes |"
)


def operators_for(row: Row) -> tuple[str, ...]:
    """The compose operators that accept ``row``'s adapters, in the registry's order."""
    from compose.operators import OPERATORS

    if row.compose is not None:
        return row.compose
    return tuple(name for name, spec in OPERATORS.items() if row.method in spec.methods)


def support_table() -> str:
    """The markdown table: one line per row of ``schemas.methods.ROWS``.

    Example:
        >>> support_table().splitlines()[2].startswith("| `lora` |")
        True
    """
    lines = [HEADER, "|" + "---|" * 9]
    for row in ROWS:
        compose = ", ".join(f"`{op}`" for op in operators_for(row)) or "—"
        cells = [
            f"`{row.method}`" if row.variant is None else f"`{row.method}` + {row.variant}",
            row.card,
            "yes",
            _MERGE[row.merge],
            _yes(row.merged_formats),
            _yes(row.gguf_lora),
            _yes(row.vllm_bundle),
            compose,
            row.note or row.params_note or "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _yes(value: bool) -> str:
    return "yes" if value else "no"
