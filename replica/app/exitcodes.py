"""Exit codes of the `agentstate` command, stable so that scripts can rely on them."""

from __future__ import annotations

from enum import IntEnum

from replica.errors import (
    AlreadyExistsError,
    DataDirLockedError,
    FieldError,
    InvalidRecordError,
    InvalidUpdateError,
    NotFoundError,
    ReplicaError,
    StorageError,
)


class ExitCode(IntEnum):
    """What an `agentstate` exit status means (documented in README.md)."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    NOT_FOUND = 3
    INVALID = 4
    DATA = 5
    UNREACHABLE = 6
    CONFLICT = 7
    PROBLEMS_FOUND = 8


def exit_code_for(exc: BaseException) -> int:
    """Map an error to its exit code; anything unforeseen is INTERNAL."""
    from .control import ControlError, RemoteError

    if isinstance(exc, RemoteError):
        return exc.exit_code
    if isinstance(exc, NotFoundError):
        return ExitCode.NOT_FOUND
    if isinstance(exc, (FieldError, InvalidUpdateError, ValueError)):
        return ExitCode.INVALID
    if isinstance(exc, AlreadyExistsError) or type(exc).__name__ == "StaleClaimError":
        return ExitCode.CONFLICT
    if isinstance(exc, (StorageError, DataDirLockedError, InvalidRecordError)):
        return ExitCode.DATA
    if isinstance(exc, ControlError):
        return ExitCode.UNREACHABLE
    for cls in type(exc).__mro__:
        code = _EXTRA.get(cls.__name__)
        if code is not None:
            return code
    if isinstance(exc, ReplicaError):
        return ExitCode.DATA
    return ExitCode.INTERNAL


_EXTRA: dict[str, int] = {}


def register_exit_code(error_name: str, code: ExitCode) -> None:
    """Let another package map its own error class (by name) to an exit code."""
    _EXTRA[error_name] = code
