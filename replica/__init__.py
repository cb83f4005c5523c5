"""agentstate's replica: typed CRDT state (tasks, graph, counters, lessons) with a durable local log."""

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

__all__ = [
    "AlreadyExistsError",
    "ChangeEvent",
    "ClosedError",
    "CompactionReport",
    "DataDirLockedError",
    "Durability",
    "Edge",
    "FieldError",
    "InvalidRecord",
    "InvalidRecordError",
    "InvalidUpdateError",
    "Lesson",
    "LogCorruptionError",
    "MissingSegmentError",
    "Node",
    "NotFoundError",
    "OpenReport",
    "Priority",
    "Replica",
    "ReplicaError",
    "StorageError",
    "Task",
    "TaskStatus",
]
