"""The one table that turns library errors into the CLI's one-line ``Error: ...`` messages."""

from __future__ import annotations

from schemas.errors import (
    AdapterNotFound,
    HubError,
    StoreCorrupted,
)

# Hints that suggest the next command; appended unless the message already names one.
HINTS: dict[type[HubError], str] = {
    AdapterNotFound: "list adapters with `hub ls`",
    StoreCorrupted: "check the store with `hub verify`",
}


def format_error(error: BaseException) -> str:
    """One line, no traceback: ``Error: <what went wrong> (<what to do next>)``."""
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, HubError):
        for cls, hint in HINTS.items():
            if isinstance(error, cls) and hint and "`hub " not in message:
                message = f"{message} ({hint})"
                break
    elif isinstance(error, OSError) and error.filename and str(error.filename) not in message:
        message = f"{error.filename}: {message}"
    return f"Error: {message}"
