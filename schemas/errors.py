"""Every error the hub raises, in one hierarchy.

Each subclass also derives from the matching builtin so callers can catch either
(``except KeyError`` works for a missing adapter). Errors carry the fields a user
needs to act (``repo``, ``revision``, ``path``, ``module``, ``field``); ``str(err)``
is the one-line message the CLI prints after ``Error: ``.
"""

from __future__ import annotations

from typing import Any


class HubError(Exception):
    """Base of every error raised by the hub. ``code`` is stable and used over HTTP
    (``hub.errors_http`` maps every kind to its status and back)."""

    code = "hub_error"

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context
        for key, value in context.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return self.message


class InvalidName(HubError, ValueError):
    """A repository id or reference that does not follow ``namespace/name[@rev]``."""

    code = "invalid_name"


class AdapterNotFound(HubError, KeyError):
    """No repository with that id."""

    code = "adapter_not_found"

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return self.message


class RevisionNotFound(HubError, KeyError):
    """The repository exists but the revision (version, alias, commit) does not."""

    code = "revision_not_found"

    def __str__(self) -> str:
        return self.message


class InvalidAdapter(HubError, ValueError):
    """An adapter folder that cannot be registered: bad config, corrupt tensors, bad shapes."""

    code = "invalid_adapter"


class UnsafeFormat(InvalidAdapter):
    """A pickle-based checkpoint (``adapter_model.bin``) that is never unpickled implicitly."""

    code = "unsafe_format"


class ForeignFormat(InvalidAdapter):
    """An adapter saved by another trainer (mlx-lm, torchtune): ``hub convert`` makes it PEFT's.

    ``format`` names the trainer's format; the message gives the convert command.
    """

    code = "foreign_format"


class IncompatibleAdapters(HubError, ValueError):
    """Adapters that cannot be combined or applied together (base, shapes, methods)."""

    code = "incompatible_adapters"


class InvalidRecipe(HubError, ValueError):
    """A compose recipe or operator parameters that fail validation."""

    code = "invalid_recipe"


class InvalidArgument(HubError, ValueError):
    """An option or argument that cannot be understood (``--rank 8..x``, ``--metric acc``)."""

    code = "invalid_argument"


class HeadMoved(InvalidArgument):
    """A commit built on a parent that is no longer the repository's head (another commit
    came first). Carries ``repo``, ``expected`` (the parent it named) and ``head``."""

    code = "head_moved"


class OutputExists(HubError, FileExistsError):
    """An output folder that already exists (refused unless forced)."""

    code = "output_exists"


class InsufficientDiskSpace(HubError, OSError):
    """Not enough free space for an output, detected before anything is written."""

    code = "insufficient_disk_space"


class AuthError(HubError, PermissionError):
    """A request without a valid token, or outside the token's scopes."""

    code = "unauthorized"


class StoreCorrupted(HubError, RuntimeError):
    """A stored blob whose bytes no longer match its digest, or that is missing."""

    code = "store_corrupted"


class StoreUnavailable(HubError, OSError):
    """The blob store cannot be reached or refuses us: an S3 endpoint down, a bucket that does
    not exist, credentials missing or refused. Nothing was changed; retry once it is back."""

    code = "store_unavailable"


class IndexUnavailable(HubError, OSError):
    """The index file cannot be opened, read or written: permissions, a full disk, an I/O
    error or a lock held too long. Nothing was changed."""

    code = "index_unavailable"


class IndexDamaged(HubError, RuntimeError):
    """The index file is missing next to a non-empty store, or is not a sound SQLite database
    (truncated, overwritten): restore it from a backup."""

    code = "index_damaged"


class AliasConflict(HubError, ValueError):
    """An alias that would shadow a version or commit, or is already taken."""

    code = "alias_conflict"


class InvalidData(HubError, ValueError):
    """An evaluation data file that cannot be used: missing fields, wrong types, not UTF-8."""

    code = "invalid_data"


class SearchRejected(HubError, ValueError):
    """``hub compose search`` found weights that do not beat the best single input and uniform
    weights on the held-out rows; carries the three losses (``found``, ``best_single``,
    ``uniform``)."""

    code = "search_rejected"
