"""The one-line description of an adapter, from its README (front matter or first paragraph).

PEFT writes the Hugging Face model-card template next to every adapter; its untouched
boilerplate ("# Model Card for Model ID", "[More Information Needed]", HTML hints) is never
taken for a description.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hub.folders import read_regular

_MAX_CHARS = 1000
_MAX_READ_BYTES = 1 << 20
_PLACEHOLDER = "[More Information Needed]"
_TEMPLATE_TITLE = re.compile(r"^# Model Card for ", re.MULTILINE)
# Sections of the template where a user writes what the adapter is.
_TEMPLATE_SUMMARY_SECTIONS = ("# Model Card for ", "### Model Description")
# Headings, lists, tables, HTML, images, badges, quotes, rules: not a description.
_NOT_PROSE = re.compile(r"#|[-*+]\s|\d+[.)]\s|\||<|!\[|\[!\[|>|={3,}|-{3,}|\*{3,}")
# Sentences of the template that are not placeholders.
_TEMPLATE_PROSE = (
    "Users (both direct and downstream) should be made aware",
    "Use the code below to get started with the model.",
    "Carbon emissions can be estimated using",
)


def readme_description(readme: Path) -> str | None:
    """The README's front-matter ``description:``, else its first prose paragraph, else None.

    Args:
        readme: path of a ``README.md`` (it need not exist). Only a regular file is read,
            and only its first MiB.

    Returns:
        One line (paragraph lines joined by spaces, at most 1000 characters) or None. PEFT's
        untouched model-card template yields None; in a filled-in template only the summary
        under the title and "### Model Description" are read.

    Example:
        >>> path = Path("README.md")                              # doctest: +SKIP
        >>> _ = path.write_text("---\\ndescription: SQL from text\\n---\\n# x\\n")
        >>> readme_description(path)
        'SQL from text'
    """
    # Only a regular file, only its head: a FIFO or a link to /dev/zero must not hang a push
    # or fill memory, and the description comes from the first paragraphs anyway.
    data = read_regular(readme, _MAX_READ_BYTES)
    if data is None:
        return None
    text = data.decode("utf-8", errors="replace")
    front, body = _split_front_matter(text)
    described = front.get("description")
    if isinstance(described, str) and described.strip():
        return _one_line(described)
    body = re.sub(r"<!--.*?-->", "", body, flags=re.DOTALL)
    if _TEMPLATE_TITLE.search(body) and _PLACEHOLDER in body:
        sections = [s for s in _sections(body) if s[0].startswith(_TEMPLATE_SUMMARY_SECTIONS)]
        return next((p for _, text in sections if (p := _first_paragraph(text))), None)
    return _first_paragraph(body)


def _split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    match = re.match(r"---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|$)", text, flags=re.DOTALL)
    if match is None:
        return {}, text
    body = text[match.end() :]
    try:
        import yaml

        data = yaml.safe_load(match.group(1))
    except Exception:  # any YAML error: a broken front matter is not worth refusing a push
        data = None
    return (data if isinstance(data, dict) else {}), body


def _sections(body: str) -> list[tuple[str, str]]:
    """(heading line, text up to the next heading) for every Markdown heading."""
    parts = re.split(r"^(#{1,6} .*)$", body, flags=re.MULTILINE)
    return [(parts[i].strip(), parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def _first_paragraph(text: str) -> str | None:
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.DOTALL | re.MULTILINE)
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in paragraph.strip().splitlines() if line.strip()]
        if not lines or _NOT_PROSE.match(lines[0]):
            continue
        joined = " ".join(lines)
        if _PLACEHOLDER in joined or joined.startswith(_TEMPLATE_PROSE):
            continue
        return _one_line(joined)
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:_MAX_CHARS]
