"""Typed records (pydantic) for what callers write and what peers send, and field validators.

Every value crossing into the Doc is validated here first; every value read back from the
Doc is validated here too, because a peer may have written anything.
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from pydantic import ValidationError as PydanticValidationError

from .errors import FieldError, shown

MAX_SAFE_INT = 2**53 - 1
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@/+#~-]{0,199}$"
TYPE_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
_ID_RE = re.compile(ID_PATTERN)

Ident = Annotated[str, Field(pattern=ID_PATTERN)]
TypeName = Annotated[str, Field(pattern=TYPE_PATTERN)]
Tag = Annotated[str, Field(min_length=1, max_length=100)]


class TaskStatus(str, Enum):
    """Where a task stands."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    BLOCKED = "blocked"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class Priority(str, Enum):
    """How urgent a task is."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


def utc_now() -> datetime:
    """The timezone-aware UTC clock used for every timestamp."""
    return datetime.now(timezone.utc)


class SecondStamp:
    """A UTC second formatted with `strftime` once, then reused while the clock stays in it (write paths
    stamp several times per write, and `strftime` costs more than the rest of a timestamp)."""

    def __init__(self, fmt: str) -> None:
        self._fmt = fmt
        self._cached: tuple[int, str] = (-1, "")

    def format(self, second: int) -> str:
        """`second` (seconds since the epoch) in this stamp's format."""
        cached, text = self._cached
        if second != cached:
            text = datetime.fromtimestamp(second, timezone.utc).strftime(self._fmt)
            self._cached = (second, text)
        return text


ISO_SECOND = SecondStamp("%Y-%m-%dT%H:%M:%S")
"""The date and time of day of an ISO-8601 UTC timestamp, without fraction or offset."""


def iso_now() -> str:
    """utc_now().isoformat(), formatted from a per-second cache because it is on the write path."""
    now = time.time()
    second = int(now)
    return f"{ISO_SECOND.format(second)}.{int((now - second) * 1_000_000):06d}+00:00"


class _NotPlainJson(Exception):
    """Raised by `_plain_copy` at the first value it does not take as is."""


def _plain_copy(value: Any, depth: int) -> Any:
    """A copy of `value` when it is made only of exact builtin JSON types (no paths built: the common case)."""
    if depth > 32:
        raise _NotPlainJson
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return value
    if kind is int:
        if -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            return value
        raise _NotPlainJson
    if kind is float:
        if math.isfinite(value):
            return value
        raise _NotPlainJson
    if kind is dict:
        out: dict[str, Any] = {}
        for k, v in value.items():
            if type(k) is not str:
                raise _NotPlainJson
            out[k] = v if type(v) is str and depth < 32 else _plain_copy(v, depth + 1)
        return out
    if kind is list or kind is tuple:
        return [_plain_copy(v, depth + 1) for v in value]
    raise _NotPlainJson


def check_json(value: Any, path: str, depth: int = 0) -> Any:
    """Return `value` if it is JSON the Doc can hold exactly, else raise ValueError naming `path`.

    Integers beyond +-2**53 are refused: Yjs carries numbers as doubles, so they would not
    come back exact from a peer. The fast walk builds no paths; anything it does not take
    (subclasses of the JSON types, or a value to refuse) goes the slow way, which names it.
    """
    try:
        return _plain_copy(value, depth)
    except _NotPlainJson:
        return _explained(value, path, depth)


def _explained(value: Any, path: str, depth: int) -> Any:
    """`check_json` the slow way: isinstance checks and the path of every value, to name what is wrong."""
    if depth > 32:
        raise ValueError(f"{path}: nested more than 32 levels deep")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            raise ValueError(f"{path}: integer {value} is beyond +-2**53 and would not stay exact; store it as a string")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: {value} is not a finite number")
        return value
    if isinstance(value, (list, tuple)):
        return [_explained(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{path}: key {k!r} is not a string")
            out[k] = _explained(v, f"{path}.{k}", depth + 1)
        return out
    raise ValueError(f"{path}: {type(value).__name__} is not a JSON value")


_PLAIN = frozenset({str, int, float, bool, type(None), list, dict})
"""Builtin JSON types: values of two different ones never encode alike."""


def json_equal(a: Any, b: Any) -> bool | None:
    """Whether `a` and `b` encode to the same JSON, told without encoding; None when not sure.

    Not sure means a type outside the builtin JSON ones (a tuple, a subclass, a non-string
    key), which the caller settles by encoding."""
    kind = type(a)
    if kind is not type(b):
        return False if kind in _PLAIN and type(b) in _PLAIN else None
    if kind is str or kind is int or kind is bool or a is None:
        return bool(a == b)
    if kind is float:
        return repr(a) == repr(b)
    if kind is list:
        if len(a) != len(b):
            return False
        for x, y in zip(a, b):
            verdict = json_equal(x, y)
            if verdict is not True:
                return verdict
        return True
    if kind is dict:
        if any(type(key) is not str for key in a) or any(type(key) is not str for key in b):
            return None
        if a.keys() != b.keys():
            return False
        for key, x in a.items():
            verdict = json_equal(x, b[key])
            if verdict is not True:
                return verdict
        return True
    return None


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON (1 and 1.0 differ, key order does not matter), encoding only when `json_equal` cannot tell."""
    if type(a) is str and type(b) is str:
        return a == b
    verdict = json_equal(a, b)
    if verdict is not None:
        return verdict
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def same_stored(a: Any, b: Any) -> bool:
    """Equal as the Doc gives values back (an integral float reads as an int)."""
    if type(a) is str and type(b) is str:
        return a == b
    return same_json(from_doc_number(a), from_doc_number(b))


def from_doc_number(value: Any) -> Any:
    """Undo Yjs's number widening: integral doubles within +-2**53 come back as int.

    Strings, the most common leaves, are handed back without a call; subclasses of list,
    dict and float are treated like the builtins (isinstance), as they always were."""
    kind = type(value)
    if kind is str:
        return value
    if kind is dict:
        return {k: v if type(v) is str else from_doc_number(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) is str else from_doc_number(v) for v in value]
    if isinstance(value, float):
        if value.is_integer() and abs(value) <= MAX_SAFE_INT:
            return int(value)
        return value
    if isinstance(value, list):
        return [from_doc_number(v) for v in value]
    if isinstance(value, dict):
        return {k: from_doc_number(v) for k, v in value.items()}
    return value


def _set_of_keys(value: Any) -> Any:
    """Sets are stored as maps of key -> true; a JS client may also write an array."""
    if isinstance(value, dict):
        return tuple(sorted(k for k, v in value.items() if v))
    if isinstance(value, (list, tuple)):
        return tuple(sorted(set(value)))
    return value


class Record(BaseModel):
    """Common base: immutable, unknown fields from newer peers ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore", use_enum_values=False)


class Task(Record):
    """A task on the board, as stored under tasks/<id> in the Doc."""

    id: Ident
    title: Annotated[str, Field(min_length=1, max_length=1000)]
    description: Annotated[str, Field(max_length=100_000)] = ""
    status: TaskStatus = TaskStatus.PENDING
    priority: Priority = Priority.MEDIUM
    owner: Annotated[str, Field(max_length=200)] | None = None
    tags: tuple[Tag, ...] = ()
    depends_on: tuple[Ident, ...] = ()
    created_at: datetime
    updated_at: datetime
    created_by: Annotated[str, Field(max_length=200)] = ""
    properties: dict[str, Any] = Field(default_factory=dict)

    @field_validator("tags", "depends_on", mode="before")
    @classmethod
    def _sets(cls, value: Any) -> Any:
        return _set_of_keys(value)

    @field_validator("properties", mode="before")
    @classmethod
    def _props(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("must be a map")
        return check_json(from_doc_number(value), "properties")


class Node(Record):
    """A typed node of the graph of thought."""

    id: Ident
    type: TypeName
    content: Annotated[str, Field(max_length=1_000_000)] = ""
    properties: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    created_by: Annotated[str, Field(max_length=200)] = ""

    @field_validator("properties", mode="before")
    @classmethod
    def _props(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("must be a map")
        return check_json(from_doc_number(value), "properties")


class Edge(Record):
    """A typed, weighted, directed edge between two nodes."""

    source: Ident
    target: Ident
    type: TypeName
    weight: float = 1.0
    properties: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    created_by: Annotated[str, Field(max_length=200)] = ""

    @property
    def key(self) -> str:
        """The edge's key in the edges map: source|type|target."""
        return edge_key(self.source, self.type, self.target)

    @field_validator("weight")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("properties", mode="before")
    @classmethod
    def _props(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("must be a map")
        return check_json(from_doc_number(value), "properties")


class Lesson(Record):
    """A lesson learnt: what was being done, what failed and how it was resolved."""

    id: Ident
    context: str
    failure: str
    resolution: str
    author: str = ""
    at: datetime


class InvalidRecord(BaseModel):
    """A stored record that failed validation, with what is wrong (never trusted, never fatal)."""

    model_config = ConfigDict(frozen=True)

    kind: str
    id: str
    problems: list[str]


def edge_key(source: str, type_: str, target: str) -> str:
    """Deterministic key, so the same edge added on two replicas lands on one entry."""
    return f"{source}|{type_}|{target}"


def describe_errors(exc: PydanticValidationError) -> list[str]:
    """Turn pydantic's errors into `field: reason` lines people can act on."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "value"
        lines.append(f"{loc}: {err['msg']}")
    return lines


_adapters: dict[tuple[type[BaseModel], str], TypeAdapter[Any]] = {}


def _fast_check(model: type[BaseModel], field: str) -> Any:
    """A cheap pre-check for common scalar fields: returns a predicate, or None to always use pydantic.

    The predicate only ever accepts values pydantic would accept unchanged; anything it
    does not accept goes through pydantic, which stays the single source of truth.
    """
    info = model.model_fields[field]
    annotation = info.annotation
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        allowed = {m.value: m for m in annotation}
        return lambda v: allowed.get(v) if isinstance(v, str) else None
    if annotation is str:
        limits = [m for m in info.metadata if hasattr(m, "max_length") or hasattr(m, "min_length")]
        if not limits and not info.metadata:
            return lambda v: v if isinstance(v, str) else None
        high = min((m.max_length for m in limits if getattr(m, "max_length", None) is not None), default=None)
        low = max((m.min_length for m in limits if getattr(m, "min_length", None) is not None), default=0)
        if len(limits) == len(info.metadata):
            return lambda v: v if isinstance(v, str) and low <= len(v) and (high is None or len(v) <= high) else None
    return None


_fast: dict[tuple[type[BaseModel], str], Any] = {}


def validate_field(model: type[BaseModel], kind: str, field: str, value: Any) -> Any:
    """Validate one field's value against `model`, raising FieldError that names the field."""
    fast = _fast.get((model, field), False)
    if fast is False and field in model.model_fields:
        fast = _fast[(model, field)] = _fast_check(model, field)
    if fast:
        checked = fast(value)
        if checked is not None:
            return checked
    info = model.model_fields.get(field)
    if info is None:
        raise FieldError(kind, field, "no such field")
    key = (model, field)
    adapter = _adapters.get(key)
    if adapter is None:
        annotation: Any = info.annotation
        if info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]
        adapter = _adapters[key] = TypeAdapter(annotation)
    try:
        result = adapter.validate_python(value)
    except PydanticValidationError as exc:
        raise FieldError(kind, field, _short_reason(exc, value)) from None
    return result


def _short_reason(exc: PydanticValidationError, value: Any) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"]
    if err.get("type") == "enum":
        msg = f"must be one of {err.get('ctx', {}).get('expected', '')}"
    suffix = f" (at {where})" if where else ""
    return f"{msg}; got {shown(value)}{suffix}"


def check_id(kind: str, value: Any, field: str = "id") -> str:
    """Validate an id: 1-200 chars of letters, digits and _.:@/+#~- ; never containing '|'."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise FieldError(kind, field, f"must be 1-200 characters of letters, digits and _.:@/+#~- ; got {shown(value)}")
    return value


def check_properties(kind: str, value: Any) -> dict[str, Any]:
    """Validate a properties map, naming the offending key."""
    if not isinstance(value, dict):
        raise FieldError(kind, "properties", f"must be a map; got {type(value).__name__}")
    try:
        return check_json(value, "properties")
    except ValueError as exc:
        raise FieldError(kind, "properties", str(exc)) from None
