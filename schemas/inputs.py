"""Checks on values a user types or a client sends, shared by the local CLI and the server so
that both refuse the same input with the same one-line message."""

from __future__ import annotations

from schemas.errors import InvalidArgument

INDEX_INT_MAX = 2**63 - 1
"""The largest integer the index (SQLite, PostgreSQL ``bigint``) can compare against."""


def check_index_int(value: int, option: str) -> int:
    """``value`` if the index can hold it (0 <= value <= 2**63-1), else InvalidArgument.

    Example:
        >>> check_index_int(16, "--rank")
        16
    """
    if not 0 <= value <= INDEX_INT_MAX:
        raise InvalidArgument(f"invalid {option}: must be between 0 and {INDEX_INT_MAX}")
    return value


def parse_index_int(digits: str, option: str) -> int:
    """The number ``digits`` (a string of 0-9) spells, bounded like ``check_index_int``
    (and never parsed when it is longer than any such number, however long it is)."""
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(INDEX_INT_MAX)):
        return check_index_int(INDEX_INT_MAX + 1, option)
    return check_index_int(int(digits), option)


def check_text(value: str, what: str) -> str:
    """``value`` if it is valid Unicode text, else InvalidArgument naming ``what``.

    A JSON ``"\\udcff"`` escape or a non-UTF-8 command-line argument decodes to a lone
    surrogate, which can be neither stored (the index is UTF-8) nor sent back.

    Example:
        >>> check_text("nlp", "tag 'team'")
        'nlp'
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidArgument(
            f"invalid {what} {value[:80]!r}: not valid Unicode text (a lone surrogate at"
            f" position {error.start}); send UTF-8 text"
        ) from None
    return value
