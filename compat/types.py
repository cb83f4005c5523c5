"""Entity dataclasses of the old ``cortical.got`` API.

Field names, defaults and validation match the old types exactly, because
``to_dict()`` output is what checksums and stored records are computed over.
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, FrozenSet, List, Mapping, Tuple, Type, TypeVar

from compat.checksums import compute_checksum
from compat.errors import ValidationError
from replica.errors import shown
from replica.models import ISO_SECOND

E = TypeVar("E", bound="Entity")

VALID_ENTITY_TYPES: FrozenSet[str] = frozenset(
    {
        "task",
        "decision",
        "edge",
        "sprint",
        "epic",
        "handoff",
        "claudemd_layer",
        "claudemd_version",
        "persona_profile",
        "team",
        "document",
    }
)

VALID_EDGE_TYPES: FrozenSet[str] = frozenset(
    {
        "DEPENDS_ON",
        "BLOCKS",
        "CONTAINS",
        "RELATES_TO",
        "REQUIRES",
        "IMPLEMENTS",
        "SUPERSEDES",
        "DERIVED_FROM",
        "PARENT_OF",
        "CHILD_OF",
        "PART_OF",
        "REFERENCES",
        "CONTRADICTS",
        "JUSTIFIES",
        "MOTIVATES",
        "CAUSED_BY",
        "TRANSFERS",
        "PRODUCES",
        "DOCUMENTED_BY",
    }
)

TASK_STATUSES: FrozenSet[str] = frozenset({"pending", "in_progress", "completed", "blocked"})
TASK_PRIORITIES: FrozenSet[str] = frozenset({"low", "medium", "high", "critical"})
SPRINT_STATUSES: FrozenSet[str] = frozenset({"available", "in_progress", "completed", "blocked"})
EPIC_STATUSES: FrozenSet[str] = frozenset({"active", "completed", "on_hold"})
HANDOFF_STATUSES: FrozenSet[str] = frozenset({"initiated", "accepted", "completed", "rejected"})


def utc_now_iso() -> str:
    """Current time as an ISO-8601 string from the UTC clock, as ``datetime.now(timezone.utc).isoformat()``
    (no fraction when the microseconds are 0), the date formatted once per second."""
    second, fraction = divmod(time.time_ns() // 1000, 1_000_000)
    prefix = ISO_SECOND.format(second)
    return f"{prefix}.{fraction:06d}+00:00" if fraction else f"{prefix}+00:00"


def _later_than(previous: str) -> str:
    """A UTC timestamp for now that is guaranteed to differ from (and follow) ``previous``.

    Two timestamps both in ``utc_now_iso``'s full form (microseconds, ``+00:00``) compare as
    text in time order, which spares parsing ``previous`` on every version bump."""
    stamp = utc_now_iso()
    if (type(previous) is str and len(previous) == len(stamp) == 32 and previous[19] == "."
            and previous.endswith("+00:00") and stamp > previous):
        return stamp
    now = datetime.now(timezone.utc)
    try:
        before = datetime.fromisoformat(previous)
    except (TypeError, ValueError):
        return now.isoformat()
    if before.tzinfo is None:
        before = before.replace(tzinfo=timezone.utc)
    if now <= before:
        now = before + timedelta(microseconds=1)
    return now.isoformat()


def _check_choice(kind: str, value: str, valid: FrozenSet[str], context_key: str) -> None:
    if value not in valid:
        raise ValidationError(f"Invalid {kind}: {shown(value)}", **{kind: value, context_key: sorted(valid)})


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValidationError(f"{name} must be in [0.0, 1.0], got {value}", **{name: value})


_IMMUTABLE = frozenset({str, int, float, bool, type(None)})
"""Field value types ``to_dict`` hands out as they are: nothing to copy."""


def _copied(value: Any, depth: int = 0) -> Any:
    """A deep copy of a field value: builtin dicts and lists copied here (a few times faster than
    ``copy.deepcopy``, which keeps a memo), anything else, or anything nested deeper than JSON
    should be, by ``copy.deepcopy``."""
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    if depth < 32:
        if kind is dict:
            return {key: item if type(item) in _IMMUTABLE else _copied(item, depth + 1) for key, item in value.items()}
        if kind is list:
            return [item if type(item) in _IMMUTABLE else _copied(item, depth + 1) for item in value]
    return copy.deepcopy(value)


@functools.lru_cache(maxsize=None)
def _field_names(cls: type) -> Tuple[str, ...]:
    """A dataclass's field names in order (``fields()`` rebuilds the list on every call)."""
    return tuple(f.name for f in fields(cls))


@dataclass
class Entity:
    """Base record of the store: id, type, version and UTC timestamps."""

    id: str
    entity_type: str = ""
    version: int = 1
    created_at: str = field(default_factory=utc_now_iso)
    modified_at: str = field(default_factory=utc_now_iso)

    def to_dict(self) -> Dict[str, Any]:
        """All fields as a JSON-ready dict (deep copies); the checksum is taken over it."""
        values = self.__dict__
        return {
            name: value if type(value) in _IMMUTABLE else _copied(value)
            for name in _field_names(type(self))
            for value in (values[name],)
        }

    @classmethod
    def from_dict(cls: Type[E], data: Mapping[str, Any]) -> E:
        """Rebuild an entity; ``id`` and ``entity_type`` are required (``KeyError`` otherwise)."""
        return cls(**_base_kwargs(data, data["id"], entity_type=data["entity_type"]))

    def compute_checksum(self) -> str:
        """16-hex checksum of ``to_dict()``; changes whenever any field does."""
        return compute_checksum(self.to_dict())

    def bump_version(self) -> None:
        """Add 1 to ``version`` and move ``modified_at`` strictly forward."""
        self.version += 1
        self.modified_at = _later_than(self.modified_at)


def _base_kwargs(data: Mapping[str, Any], entity_id: str, **extra: Any) -> Dict[str, Any]:
    kwargs: Dict[str, Any] = {
        "id": entity_id,
        "version": data.get("version", 1),
        "created_at": data.get("created_at") or utc_now_iso(),
        "modified_at": data.get("modified_at") or utc_now_iso(),
    }
    kwargs.update(extra)
    return kwargs


def _own_kwargs(cls: Type[Entity], data: Mapping[str, Any]) -> Dict[str, Any]:
    """The subclass-specific fields present in ``data`` (absent ones take their defaults)."""
    return {
        name: value if type(value) in _IMMUTABLE else _copied(value)
        for name in _own_field_names(cls)
        if name in data
        for value in (data[name],)
    }


@functools.lru_cache(maxsize=None)
def _own_field_names(cls: type) -> Tuple[str, ...]:
    """The fields a subclass adds to :class:`Entity`, in order."""
    base = set(_field_names(Entity))
    return tuple(name for name in _field_names(cls) if name not in base)


@dataclass
class Task(Entity):
    """A unit of work with a validated status and priority."""

    title: str = ""
    status: str = "pending"
    priority: str = "medium"
    description: str = ""
    properties: Dict[str, Any] = field(default_factory=dict)
    metadata: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.entity_type = "task"
        _check_choice("status", self.status, TASK_STATUSES, "valid_statuses")
        _check_choice("priority", self.priority, TASK_PRIORITIES, "valid_priorities")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Task":
        """Rebuild a Task; only ``id`` is required."""
        return cls(**_base_kwargs(data, data["id"]), **_own_kwargs(cls, data))


@dataclass
class Decision(Entity):
    """A recorded decision with its rationale and the ids it affects."""

    title: str = ""
    rationale: str = ""
    affects: List[str] = field(default_factory=list)
    properties: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.entity_type = "decision"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Decision":
        """Rebuild a Decision; only ``id`` is required."""
        return cls(**_base_kwargs(data, data["id"]), **_own_kwargs(cls, data))


@dataclass
class Edge(Entity):
    """A typed, weighted relation between two entities; an empty id is derived from its ends."""

    source_id: str = ""
    target_id: str = ""
    edge_type: str = ""
    weight: float = 1.0
    confidence: float = 1.0

    def __post_init__(self) -> None:
        self.entity_type = "edge"
        if self.edge_type not in VALID_EDGE_TYPES:
            raise ValidationError(
                f"Invalid edge_type: {self.edge_type!r}",
                edge_type=self.edge_type,
                valid_types=sorted(VALID_EDGE_TYPES),
            )
        if not self.id:
            self.id = f"E-{self.source_id}-{self.target_id}-{self.edge_type}"
        _check_unit_interval("weight", self.weight)
        _check_unit_interval("confidence", self.confidence)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Edge":
        """Rebuild an Edge; a missing ``id`` is generated from source, target and type."""
        return cls(**_base_kwargs(data, data.get("id", "")), **_own_kwargs(cls, data))


@dataclass
class Sprint(Entity):
    """A time-boxed batch of work inside an epic."""

    title: str = ""
    status: str = "available"
    epic_id: str = ""
    number: int = 0
    session_id: str = ""
    isolation: List[str] = field(default_factory=list)
    goals: List[Any] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    properties: Dict[str, Any] = field(default_factory=dict)
    metadata: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.entity_type = "sprint"
        _check_choice("status", self.status, SPRINT_STATUSES, "valid_statuses")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Sprint":
        """Rebuild a Sprint; only ``id`` is required."""
        return cls(**_base_kwargs(data, data["id"]), **_own_kwargs(cls, data))


@dataclass
class Epic(Entity):
    """A large goal split into phases and sprints."""

    title: str = ""
    status: str = "active"
    phase: int = 1
    phases: List[Any] = field(default_factory=list)
    properties: Dict[str, Any] = field(default_factory=dict)
    metadata: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.entity_type = "epic"
        _check_choice("status", self.status, EPIC_STATUSES, "valid_statuses")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Epic":
        """Rebuild an Epic; only ``id`` is required."""
        return cls(**_base_kwargs(data, data["id"]), **_own_kwargs(cls, data))


@dataclass
class Handoff(Entity):
    """Work passed from one agent to another, with its lifecycle timestamps."""

    source_agent: str = ""
    target_agent: str = ""
    task_id: str = ""
    status: str = "initiated"
    instructions: str = ""
    context: Dict[str, Any] = field(default_factory=dict)
    result: Dict[str, Any] = field(default_factory=dict)
    artifacts: List[Any] = field(default_factory=list)
    initiated_at: str = ""
    accepted_at: str = ""
    completed_at: str = ""
    rejected_at: str = ""
    reject_reason: str = ""
    properties: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.entity_type = "handoff"
        _check_choice("status", self.status, HANDOFF_STATUSES, "valid_statuses")
        if not self.initiated_at:
            self.initiated_at = utc_now_iso()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Handoff":
        """Rebuild a Handoff; only ``id`` is required."""
        return cls(**_base_kwargs(data, data["id"]), **_own_kwargs(cls, data))


ENTITY_CLASSES: Mapping[str, Type[Entity]] = {
    "task": Task,
    "decision": Decision,
    "edge": Edge,
    "sprint": Sprint,
    "epic": Epic,
    "handoff": Handoff,
}
"""The entity types that have their own class; other valid types are read generically."""


__all__ = [
    "Entity",
    "Task",
    "Decision",
    "Edge",
    "Sprint",
    "Epic",
    "Handoff",
    "ENTITY_CLASSES",
    "VALID_ENTITY_TYPES",
    "VALID_EDGE_TYPES",
    "TASK_STATUSES",
    "TASK_PRIORITIES",
    "SPRINT_STATUSES",
    "EPIC_STATUSES",
    "HANDOFF_STATUSES",
    "utc_now_iso",
]
