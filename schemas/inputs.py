"""Checks on text a user types or a client sends, shared by the local CLI and the server so
that both refuse the same input with the same one-line message (search bounds: see the
search schema)."""

from __future__ import annotations

from schemas.errors import InvalidArgument


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
