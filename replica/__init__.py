"""agentstate's replica: typed CRDT state (tasks, graph, counters, lessons) with a durable local log.

Names are imported on first use (PEP 562), so `import replica.app.cli` or `replica.app.control`
does not pay for pycrdt and pydantic: the CLI's daemon path never needs them.
"""

from __future__ import annotations

from importlib import import_module

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .changes import ChangeEvent
    from .durability import Durability
    from .errors import (
        AlreadyExistsError,
        ClosedError,
        DataDirLockedError,
        FieldError,
        InvalidRecordError,
        InvalidUpdateError,
        LogCorruptionError,
        MissingSegmentError,
        NotFoundError,
        ReplicaError,
        StorageError,
    )
    from .models import Edge, InvalidRecord, Lesson, Node, Priority, Task, TaskStatus
    from .replica import CompactionReport, OpenReport, Replica

_HOME = {
    "ChangeEvent": "changes",
    "Durability": "durability",
    "AlreadyExistsError": "errors",
    "ClosedError": "errors",
    "DataDirLockedError": "errors",
    "FieldError": "errors",
    "InvalidRecordError": "errors",
    "InvalidUpdateError": "errors",
    "LogCorruptionError": "errors",
    "MissingSegmentError": "errors",
    "NotFoundError": "errors",
    "ReplicaError": "errors",
    "StorageError": "errors",
    "Edge": "models",
    "InvalidRecord": "models",
    "Lesson": "models",
    "Node": "models",
    "Priority": "models",
    "Task": "models",
    "TaskStatus": "models",
    "CompactionReport": "replica",
    "OpenReport": "replica",
    "Replica": "replica",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    """Import a public name from its module the first time it is asked for."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'replica' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names, as `from replica import *` sees them."""
    return sorted(set(globals()) | set(__all__))
