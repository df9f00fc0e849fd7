"""Rewrite the README's method table from ``compose.support.support_table()``:
``python -m tests.render_methods`` (``tests/schemas/test_methods.py`` fails while it is stale)."""

from __future__ import annotations

import re
from pathlib import Path

from compose.support import support_table

README = Path(__file__).resolve().parents[1] / "README.md"
_TABLE = re.compile(r"(<!-- methods-table[^>]*-->\n)(.*?)(<!-- /methods-table -->)", re.S)


def main() -> None:
    text = README.read_text()
    if not _TABLE.search(text):
        raise SystemExit("README.md lost its methods-table markers")
    README.write_text(_TABLE.sub(lambda m: m.group(1) + support_table() + m.group(3), text))


if __name__ == "__main__":
    main()
