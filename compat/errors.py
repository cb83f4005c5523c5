"""Exception hierarchy of the old ``cortical.got`` API.

Every error carries a human message plus keyword context so callers can both
print it and inspect it programmatically.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple, Type


class GoTError(Exception):
    """Base error of the compat API: a message plus a dict of keyword context."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message: str = message
        self.context: Dict[str, Any] = dict(context)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> Tuple[Any, ...]:
        # Keep the context when the error crosses a process boundary (pickle).
        return (_rebuild_error, (type(self), self.message, self.context))

    def to_dict(self) -> Dict[str, Any]:
        """Serialise the error as ``{"error_type", "message", "context"}`` for logs and APIs."""
        return {
            "error_type": type(self).__name__,
            "message": self.message,
            "context": dict(self.context),
        }


def _rebuild_error(cls: Type[GoTError], message: str, context: Dict[str, Any]) -> GoTError:
    return cls(message, **context)


class TransactionError(GoTError):
    """A transaction was used in a state that does not allow the operation."""


class ConflictError(GoTError):
    """Two versions of an entity cannot be merged automatically."""


class CorruptionError(GoTError):
    """Stored data failed its checksum or structural check."""


class SyncError(GoTError):
    """Synchronisation with another replica failed."""


class NotFoundError(GoTError):
    """A requested entity does not exist."""


class ValidationError(GoTError):
    """An entity or value failed validation."""


__all__ = [
    "GoTError",
    "TransactionError",
    "ConflictError",
    "CorruptionError",
    "SyncError",
    "NotFoundError",
    "ValidationError",
]
