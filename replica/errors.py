"""Errors raised by the replica: each says what went wrong and, where it helps, what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SHOWN_CHARS = 80
"""How much of a rejected value or id an error message repeats (a 100 KB title is named, not echoed)."""


def shown(value: Any) -> str:
    """`repr(value)` for an error message; a string longer than SHOWN_CHARS characters (or another value
    whose repr is) shows its first SHOWN_CHARS and says its full length."""
    if isinstance(value, str):
        if len(value) <= SHOWN_CHARS:
            return repr(value)
        return f"{value[:SHOWN_CHARS]!r}... ({len(value):,} characters)"
    text = repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}... ({len(text):,} characters as text)"


def _named(ident: Any) -> str:
    """An id as messages quote it: `'id'` when short (whatever its type), else cut as `shown` cuts it."""
    text = str(ident)
    return f"'{text}'" if len(text) <= SHOWN_CHARS else shown(text)


class ReplicaError(Exception):
    """Base class of every error the replica raises on purpose."""


class FieldError(ReplicaError, ValueError):
    """A value given for a field is invalid; the message names the field and why."""

    def __init__(self, kind: str, field: str, reason: str) -> None:
        self.kind = kind
        self.field = field
        self.reason = reason
        super().__init__(f"{kind} field '{field}': {reason}")


class NotFoundError(ReplicaError, KeyError):
    """The task, node, edge or counter named does not exist."""

    def __init__(self, kind: str, ident: str) -> None:
        self.kind = kind
        self.ident = ident
        super().__init__(f"{kind} {_named(ident)} not found")

    def __str__(self) -> str:
        return str(self.args[0])


class AlreadyExistsError(ReplicaError):
    """A create named an id that is already taken."""

    def __init__(self, kind: str, ident: str) -> None:
        self.kind = kind
        self.ident = ident
        super().__init__(f"{kind} {_named(ident)} already exists")


class InvalidRecordError(ReplicaError):
    """A stored record (usually written by a peer) fails validation; it is reported, never trusted."""

    def __init__(self, kind: str, ident: str, problems: list[str]) -> None:
        self.kind = kind
        self.ident = ident
        self.problems = problems
        super().__init__(f"{kind} {_named(ident)} is invalid: " + "; ".join(problems))


class InvalidUpdateError(ReplicaError):
    """An update's bytes are not a Yjs update; nothing was applied."""


class ClosedError(ReplicaError):
    """The replica was closed, or failed and stopped accepting writes."""


class DataDirLockedError(ReplicaError):
    """Another process holds the data directory."""

    def __init__(self, path: Path, holder: dict[str, object] | None) -> None:
        self.path = path
        self.holder = holder or {}
        pid = self.holder.get("pid", "?")
        super().__init__(f"data directory {path} is held by another process (pid {pid})")


class StorageError(ReplicaError):
    """The durable log or a snapshot cannot be read or written."""


class DiskFullError(StorageError):
    """The disk (or quota) has no room for the log: the write was refused and changed nothing."""

    def __init__(self, path: Path, need: int) -> None:
        super().__init__(f"disk full: no room for {need} more bytes of the log at {path}; "
                         "free some space and retry (nothing was written)")
        self.path = path
        self.need = need


class LogCorruptionError(StorageError):
    """A record in the middle of the log is corrupt: recovery stops instead of guessing."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(
            f"corrupt log record in {path} at offset {offset}: {reason}; "
            "run `agentstate repair` to salvage every readable record"
        )


class MissingSegmentError(StorageError):
    """Log records between a snapshot and the newest segment are missing."""

    def __init__(self, directory: Path, expected_lsn: int, found_lsn: int, path: Path) -> None:
        self.directory = directory
        self.expected_lsn = expected_lsn
        self.found_lsn = found_lsn
        self.path = path
        super().__init__(
            f"log records {expected_lsn}..{found_lsn - 1} are missing before {path} "
            "(a segment was deleted or lost); run `agentstate repair` to keep what is readable"
        )
