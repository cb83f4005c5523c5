"""Versioned entity store of the old ``cortical.got`` API, kept in a replica.

Entities live in the replica collection ``got_entities`` (one JSON record per entity,
merged field by field across replicas), so they replicate. Each record holds the
entity's ``to_dict()`` plus one bookkeeping field, ``_got``: the canonical checksum of
the data (:func:`compat.checksums.compute_checksum`), the transaction that wrote it and
the global version of the write. The global version is the replica counter
``got.version``: every commit on any replica adds exactly one. Every write also leaves a
write record carrying its global version, which is the history ``read_at_version``
reads.

A commit is one replica transaction: one Doc update, one log record, atomic on recovery.
Everything a batch writes is validated before the first write, because a Doc
transaction cannot be rolled back.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

from compat import sharing
from compat.board import Board, Place, check_projection, place_of
from compat.checksums import compute_checksum
from compat.config import DurabilityMode
from compat.errors import CorruptionError, GoTError, ValidationError
from compat.registry import OnceMap
from compat.types import (
    ENTITY_CLASSES,
    EPIC_STATUSES,
    HANDOFF_STATUSES,
    SPRINT_STATUSES,
    TASK_PRIORITIES,
    TASK_STATUSES,
    VALID_EDGE_TYPES,
    VALID_ENTITY_TYPES,
    Entity,
    _base_kwargs,
    utc_now_iso,
)
from pycrdt import Map

from replica import Durability, Replica
from replica.errors import shown
from replica.models import check_id, check_json, from_doc_number
from replica.records import Clock, FieldConflict, Records, WriteRecord, join
from replica.schema import EDGES, NODES, TASKS, observe_touched

from .layout import BOARD_LAYOUT, ENTITIES_COLLECTION, LAYOUT_COLLECTION, LAYOUT_RECORD, layout_current


BoardSeen = Tuple[str, int]
"""A board object's stamp and the board's change count when it was read (see ``ReplicaEntities.board_moved``)."""

VERSION_COUNTER = "got.version"
"""Replica counter holding the global version (commits on every replica)."""

META_KEY = "_got"
"""Bookkeeping field of every entity record: checksum, writing transaction, global version, time."""

IGNORED_FIELDS: Tuple[str, ...] = ("version", "created_at", "modified_at", META_KEY)
"""Fields whose concurrent changes never count as a conflict."""

HISTORY_DIR_NAME = "_history"

VERIFIED_MARKER = ".compat-verified.json"
"""File in the replica directory: the state fingerprint at the last close and the entities then bad."""

PathLike = Union[str, Path]


# ----------------------------------------------------------------------- entity types


@dataclass
class GenericEntity(Entity):
    """An entity of a valid type without its own class (claudemd_layer, team, ...); keeps every field."""

    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """The five base fields plus every other field read from storage."""
        base = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(Entity)}
        return {**copy.deepcopy(self.extra), **base}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GenericEntity":
        """Rebuild from a dict with ``id`` and ``entity_type``; other keys go to ``extra``."""
        base = {f.name for f in fields(Entity)}
        extra = {key: copy.deepcopy(value) for key, value in data.items() if key not in base}
        return cls(**_base_kwargs(data, data["id"], entity_type=data["entity_type"]), extra=extra)


def entity_class(entity_type: Any, entity_id: str) -> type:
    """The class for ``entity_type``; ValueError for a missing or unknown type (as the old store)."""
    if not entity_type:
        raise ValueError(f"Missing entity_type for entity {entity_id}")
    cls = ENTITY_CLASSES.get(entity_type)
    if cls is not None:
        return cls
    if entity_type in VALID_ENTITY_TYPES:
        return GenericEntity
    raise ValueError(f"Unknown entity_type {entity_type!r} for entity {entity_id}")


# ----------------------------------------------------------------------- schema check

_Check = Callable[[Any], Optional[str]]


def _is_text(value: Any) -> Optional[str]:
    return None if isinstance(value, str) else f"must be a string, got {type(value).__name__}"


def _is_int(value: Any) -> Optional[str]:
    return None if isinstance(value, int) and not isinstance(value, bool) else f"must be an integer, got {shown(value)}"


def _is_map(value: Any) -> Optional[str]:
    return None if isinstance(value, dict) else f"must be an object, got {type(value).__name__}"


def _is_list(value: Any) -> Optional[str]:
    return None if isinstance(value, list) else f"must be a list, got {type(value).__name__}"


def _is_text_list(value: Any) -> Optional[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return "must be a list of strings"
    return None


def _unit(value: Any) -> Optional[str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        return f"must be a number in [0.0, 1.0], got {shown(value)}"
    return None


def _one_of(choices: Iterable[str]) -> _Check:
    allowed = frozenset(choices)

    def check(value: Any) -> Optional[str]:
        return None if value in allowed else f"must be one of {sorted(allowed)}, got {shown(value)}"

    return check


_COMMON: Dict[str, _Check] = {
    "id": lambda v: None if isinstance(v, str) and v else "must be a non-empty string",
    "entity_type": _one_of(VALID_ENTITY_TYPES),
    "version": _is_int,
    "created_at": _is_text,
    "modified_at": _is_text,
}

_SCHEMAS: Dict[str, Dict[str, _Check]] = {
    "task": {
        "title": _is_text,
        "status": _one_of(TASK_STATUSES),
        "priority": _one_of(TASK_PRIORITIES),
        "description": _is_text,
        "properties": _is_map,
        "metadata": _is_map,
    },
    "decision": {"title": _is_text, "rationale": _is_text, "affects": _is_text_list, "properties": _is_map},
    "edge": {
        "source_id": _is_text,
        "target_id": _is_text,
        "edge_type": _one_of(VALID_EDGE_TYPES),
        "weight": _unit,
        "confidence": _unit,
    },
    "sprint": {
        "title": _is_text,
        "status": _one_of(SPRINT_STATUSES),
        "epic_id": _is_text,
        "number": _is_int,
        "session_id": _is_text,
        "isolation": _is_list,
        "goals": _is_list,
        "notes": _is_list,
        "properties": _is_map,
        "metadata": _is_map,
    },
    "epic": {
        "title": _is_text,
        "status": _one_of(EPIC_STATUSES),
        "phase": _is_int,
        "phases": _is_list,
        "properties": _is_map,
        "metadata": _is_map,
    },
    "handoff": {
        "source_agent": _is_text,
        "target_agent": _is_text,
        "task_id": _is_text,
        "status": _one_of(HANDOFF_STATUSES),
        "instructions": _is_text,
        "context": _is_map,
        "result": _is_map,
        "artifacts": _is_list,
        "initiated_at": _is_text,
        "accepted_at": _is_text,
        "completed_at": _is_text,
        "rejected_at": _is_text,
        "reject_reason": _is_text,
        "properties": _is_map,
    },
}


def schema_errors(entity: Entity) -> List[str]:
    """``field: problem`` lines for every field of ``entity`` that breaks its type's schema."""
    data = entity.to_dict() if isinstance(entity, GenericEntity) else entity.__dict__
    checks = {**_COMMON, **_SCHEMAS.get(data.get("entity_type", ""), {})}
    errors = []
    for name, check in checks.items():
        if name not in data:
            errors.append(f"{name}: missing")
            continue
        problem = check(data[name])
        if problem:
            errors.append(f"{name}: {problem}")
    return errors


def validate_entity(entity: Entity) -> None:
    """Raise ValidationError (context ``entity_type``, ``errors``) when the schema check fails."""
    errors = schema_errors(entity)
    if errors:
        raise ValidationError(
            f"Schema validation failed for {entity.entity_type or 'entity'} {entity.id}: {'; '.join(errors)}",
            entity_type=entity.entity_type,
            entity_id=entity.id,
            errors=errors,
        )


# ------------------------------------------------------------------- replica core


@dataclass
class BatchResult:
    """What a batch write did: the new global version (None when refused), why it was refused, the log position."""

    version: Optional[int]
    refused: List[Any] = field(default_factory=list)
    lsn: int = 0


@dataclass
class _Prepared:
    entity: Entity
    bumped: Entity
    data: Dict[str, Any]
    checksum: str
    on_board: bool = True


def _restore_floats(entity: Entity) -> Entity:
    """Give float fields back their type (Yjs returns an integral double such as 1.0 as int)."""
    for name in _float_fields(type(entity)):
        value = getattr(entity, name)
        if isinstance(value, int) and not isinstance(value, bool):
            setattr(entity, name, float(value))
    return entity


@functools.lru_cache(maxsize=None)
def _float_fields(cls: type) -> Tuple[str, ...]:
    """The names of a dataclass's fields declared float."""
    return tuple(spec.name for spec in fields(cls) if spec.type in ("float", float))


@functools.lru_cache(maxsize=None)
def _copies_plainly(cls: type) -> bool:
    """True when ``copy.copy`` of a ``cls`` instance is a new instance with the same ``__dict__`` (no
    ``__copy__``, ``__reduce__``, ``__getstate__`` or slots of its own)."""
    return (getattr(cls, "__copy__", None) is None and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__ and cls.__getstate__ is object.__getstate__
            and not any("__slots__" in vars(base) for base in cls.__mro__[:-1]))


def _shallow_copy(entity: Entity) -> Entity:
    """``copy.copy(entity)`` without the reduce protocol's round trip where the class allows it."""
    cls = type(entity)
    if not _copies_plainly(cls):
        return copy.copy(entity)
    twin = object.__new__(cls)
    twin.__dict__.update(entity.__dict__)
    return twin


def stored_checksum(data: Mapping[str, Any]) -> str:
    """The checksum of ``data`` as the replica will give it back.

    Yjs keeps every number as a double and reads give integral ones back as int, so the
    canonical form is taken over that normalised data (``1.0`` and ``1`` checksum alike)."""
    return compute_checksum(from_doc_number(dict(data)))


def _strip(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """The entity's data: the record without its bookkeeping field (a shallow copy)."""
    data = dict(raw)
    data.pop(META_KEY, None)
    return data


def _meta(raw: Mapping[str, Any]) -> Dict[str, Any]:
    meta = raw.get(META_KEY)
    return meta if isinstance(meta, dict) else {}


class ReplicaEntities:
    """The entity operations on one replica, shared by every compat object (and command) using it.

    Keeps a cache of each record's write clock (the base the next write claims to have
    seen), dropped whenever a peer's update arrives, and remembers which records it has
    verified: only records changed since (locally or by a peer) are verified again, and a
    marker file carries the result across restarts while the replica's state is unchanged."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.records: Records = replica.collection(ENTITIES_COLLECTION, ignore_fields=IGNORED_FIELDS)
        self._clocks: Dict[str, Clock] = {}
        self._clock_lock = threading.Lock()
        self._generation = 0
        self._updates = 0
        self._version: Optional[Tuple[int, int]] = None
        replica.on_update(self._on_update)
        self._verify_lock = threading.Lock()
        self._bad: Optional[Set[str]] = None
        self._dirty: Set[str] = set()
        self._touches: Dict[str, int] = {}
        self.board = Board(replica)
        self._board_changes = 0
        """Transactions that changed the board (tasks, nodes, edges; local or a peer's): equal counts mean
        no board object moved. Deep observers, since a Doc observer cannot be added inside a transaction."""
        for root in (TASKS, NODES, EDGES):
            replica.keep_subscription(replica.doc.get(root, type=Map).integrated.observe_deep(self._count_change))
        self._layout_marked = False
        self.upgrade_problems: List[str] = self.upgrade()
        self._opened_fingerprint = self.fingerprint()
        replica.keep_subscription(observe_touched(replica.doc.get(ENTITIES_COLLECTION, type=Map), self._on_change))

    def upgrade(self) -> List[str]:
        """Put the entities of a directory written before the board layout on the board, once (in place).

        One transaction, under the log's append lock: of several processes opening at once,
        the first upgrades and the others find it done. An entity already on the board is
        left alone; one that fails verification or cannot go on the board stays in its
        snapshot only and is returned as a problem (``agentstate verify`` lists it too)."""
        layout = self.replica.collection(LAYOUT_COLLECTION)
        if layout_current(layout.get(LAYOUT_RECORD)) or not self.records.ids():
            self._layout_marked = layout_current(layout.get(LAYOUT_RECORD))
            return []
        problems: List[str] = []
        with self.replica.transaction(wait=False):
            if layout_current(layout.get(LAYOUT_RECORD)):
                self._layout_marked = True
                return []
            for entity_id, raw in sorted(self.records.all().items()):
                if _on_board(raw):
                    continue
                try:
                    self.build(entity_id, raw)
                    data = _strip(raw)
                    check_projection(data)
                except (CorruptionError, ValidationError, ValueError) as exc:
                    problems.append(f"{entity_id}: {exc}")
                    continue
                if self.board.current(place_of(data)) is None:
                    self.board.put(data)
                body = dict(raw)
                body[META_KEY] = {**_meta(raw), "board": BOARD_LAYOUT}
                self._note_write(entity_id, self.records.put(entity_id, body, base=self.base_clock(entity_id)))
            self._mark_layout(problems)
        return problems

    def _mark_layout(self, problems: Sequence[str] = ()) -> None:
        """Record (inside a write) that this directory's entities live on the board."""
        if self._layout_marked:
            return
        layout = self.replica.collection(LAYOUT_COLLECTION)
        if not layout_current(layout.get(LAYOUT_RECORD)):
            layout.put(LAYOUT_RECORD, {"layout": BOARD_LAYOUT, "at": utc_now_iso(), "problems": list(problems)})
        self._layout_marked = True

    def _on_change(self, touched: Set[str]) -> None:
        """Note every record a transaction touched (it must be verified again)."""
        with self._verify_lock:
            self._dirty |= touched
            for entity_id in touched:
                self._touches[entity_id] = self._touches.get(entity_id, 0) + 1

    def fingerprint(self) -> str:
        """Identifies the replica's whole state: its state vector and its delete set (cheap to compute)."""
        vector = self.replica.state_vector()
        return hashlib.sha256(vector + self.replica.diff(vector)).hexdigest()

    def _count_change(self, events: Any) -> None:
        """Deep observer of a board root: count the transactions that changed it (events left unread)."""
        self._board_changes += 1

    def _on_update(self, update: bytes, origin: Optional[str]) -> None:
        self._updates += 1
        if origin is not None:
            with self._clock_lock:
                self._generation += 1
                self._clocks.clear()

    def where(self, entity_id: str) -> str:
        """A human-readable location of an entity record, for error messages."""
        home = self.replica.datadir.path if self.replica.datadir is not None else "memory"
        return f"{home}#{ENTITIES_COLLECTION}/{entity_id}"

    # ------------------------------------------------------------------ versions

    def current_version(self) -> int:
        """The global version: commits made on every replica this one has heard of.

        Cached until the replica's next transaction (local, another process's or a peer's) ends."""
        self.replica.refresh()
        cached = self._version
        if cached is not None and cached[0] == self._updates:
            return cached[1]
        updates = self._updates
        value = self.replica.counters.value(VERSION_COUNTER)
        self._version = (updates, value)
        return value

    def _count_commit(self, version: int) -> None:
        """Add this commit to the global version (inside its write scope, which read it as ``version - 1``).

        The scope's transaction ends with exactly one update, which advances ``_updates`` by one,
        so the cached value stays right without summing the counter's slots again."""
        self.replica.counters.bump(VERSION_COUNTER)
        self._version = (self._updates + 1, version)

    def add_versions(self, count: int) -> None:
        """Raise the global version by ``count`` (migration sets it to the old store's value)."""
        if count > 0:
            self.replica.counters.incr(VERSION_COUNTER, count)

    # ------------------------------------------------------------------- reading

    def ids(self) -> List[str]:
        """Ids of the entities that exist now: every task on the board, every other entity compat wrote
        whose board object exists, and junk records (so checks find them); a node or edge made
        natively is read by its id, not listed."""
        found = set(self.replica.tasks.ids())
        stored = self.records.all()
        found.update(entity_id for entity_id in self.records.ids() if entity_id not in stored)
        for entity_id, raw in stored.items():
            if entity_id in found:
                continue
            if not raw.get("entity_type") or not _on_board(raw):
                found.add(entity_id)
                continue
            place = self._snapshot_place(raw)
            if place is None or self.board.current(place) is not None:
                found.add(entity_id)
        return sorted(found)

    def exists(self, entity_id: str) -> bool:
        """True if the entity exists now (on the board, or as a snapshot standing alone)."""
        raw, place = self._locate(entity_id)
        return place is not None or (raw is not None and not _on_board(raw))

    def raw(self, entity_id: str) -> Optional[Dict[str, Any]]:
        """The stored snapshot (compat's own record: data plus ``_got``), or None."""
        return self.records.get(entity_id)

    def place(self, entity_id: str) -> Optional[Place]:
        """Where the entity lives on the board now, or None when it does not exist."""
        return self._locate(entity_id)[1]

    def _snapshot_place(self, raw: Mapping[str, Any]) -> Optional[Place]:
        """The board place a snapshot projects to; None for a snapshot that names none (junk)."""
        try:
            return place_of(_strip(raw))
        except (KeyError, TypeError):
            return None

    def _locate(self, entity_id: str) -> Tuple[Optional[Dict[str, Any]], Optional[Place]]:
        """(snapshot, board place) of an entity; the place is None when it is not on the board."""
        raw, place, _ = self._locate_board(entity_id)
        return raw, place

    def _locate_board(
        self, entity_id: str
    ) -> Tuple[Optional[Dict[str, Any]], Optional[Place], Optional[Dict[str, Any]]]:
        """(snapshot, board place, board fields) of an entity, the board read once; place and fields are None
        when it is not on the board (callers hand the fields on rather than reading the board again)."""
        raw = self.records.get(entity_id)
        if raw is not None and raw.get("entity_type") and "__invalid__" not in raw:
            place = self._snapshot_place(raw)
            board = self.board.current(place) if place is not None else None
            return (raw, place, board) if board is not None else (raw, None, None)
        place = self.board.native_place(entity_id)
        board = self.board.current(place) if place is not None else None
        return (raw, place, board) if board is not None else (raw, None, None)

    def read(self, entity_id: str) -> Optional[Entity]:
        """The entity as every caller sees it (snapshot verified, board fields over it); None when absent.

        A snapshot written without a board object (by an older peer, or junk) is read alone, as before."""
        return self._read_stamped(entity_id)[0]

    def _read_stamped(self, entity_id: str) -> Tuple[Optional[Entity], str]:
        """The entity as :meth:`read` gives it and :meth:`board_stamp` of what it was composed from, one board read."""
        raw, place, board = self._locate_board(entity_id)
        stamp = self.board.stamp_of(board)
        if raw is not None and (not raw.get("entity_type") or "__invalid__" in raw or not _on_board(raw)):
            return self.build(entity_id, raw, merged=True), stamp
        if place is None:
            return None, stamp
        return self._composed(entity_id, raw, place, board), stamp

    def _composed(self, entity_id: str, raw: Optional[Mapping[str, Any]], place: Place,
                  board: Optional[Mapping[str, Any]] = None) -> Optional[Entity]:
        """Verify the snapshot (if any) and rebuild the entity from it with the board's fields over it
        (``board``: those fields when the caller has just read them)."""
        snapshot = None
        if raw is not None:
            verified = self.build(entity_id, raw, merged=True)
            snapshot = _strip(raw)
        data, changed = self.board.compose_checked(entity_id, snapshot, place, board)
        if data is None:
            return None
        if snapshot is not None and not changed:
            return verified
        cls = entity_class(data.get("entity_type"), entity_id)
        try:
            return _restore_floats(cls.from_dict(data))
        except (GoTError, KeyError, TypeError, ValueError) as exc:
            raise CorruptionError(
                f"Entity {entity_id} on the board does not build a {cls.__name__}: {exc}",
                entity_id=entity_id,
                path=self.where(entity_id),
            ) from None

    def stored_version(self, entity_id: str) -> int:
        """The entity's ``version`` as a reader sees it now (0 when it does not exist)."""
        raw, place, board = self._locate_board(entity_id)
        if raw is not None and not _on_board(raw):
            version = raw.get("version", 0)
            return version if isinstance(version, int) else 0
        if place is None:
            if raw is not None and ("__invalid__" in raw or not raw.get("entity_type")):
                version = raw.get("version", 0)
                return version if isinstance(version, int) else 0
            return 0
        data = self.board.compose(entity_id, _strip(raw) if raw is not None else None, place, board)
        version = (data or {}).get("version", 0)
        return version if isinstance(version, int) else 0

    def board_stamp(self, entity_id: str) -> str:
        """A fingerprint of the entity's board object: a native write changes it (for the optimistic check)."""
        return self.board.stamp_of(self._locate_board(entity_id)[2])

    def build(self, entity_id: str, raw: Mapping[str, Any], *, merged: bool = False) -> Entity:
        """Verify a stored record and rebuild its entity.

        A checksum mismatch raises CorruptionError, except for a record that is the
        field-by-field merge of concurrent writes (``merged``), where every field must
        come from one of them. A missing or unknown ``entity_type`` raises ValueError; data
        that does not build its class raises CorruptionError."""
        data = _strip(raw)
        expected = _meta(raw).get("checksum")
        actual = compute_checksum(data)
        if expected != actual and not (merged and self._is_merge_of_heads(entity_id, raw)):
            raise CorruptionError(
                f"Checksum mismatch for entity {entity_id}",
                entity_id=entity_id,
                expected=expected,
                actual=actual,
                path=self.where(entity_id),
            )
        cls = entity_class(data.get("entity_type"), entity_id)
        try:
            return _restore_floats(cls.from_dict(data))
        except (GoTError, KeyError, TypeError, ValueError) as exc:
            raise CorruptionError(
                f"Entity {entity_id} does not build a {cls.__name__}: {exc}",
                entity_id=entity_id,
                path=self.where(entity_id),
            ) from None

    def _is_merge_of_heads(self, entity_id: str, raw: Mapping[str, Any]) -> bool:
        """True when ``raw`` is the per-field merge of two or more concurrent, individually valid writes."""
        history = [w for w in self.records.history(entity_id) if w.data is not None]
        heads = [w for w in history if not any(o is not w and o.dominates(w) for o in history)]
        if len(heads) < 2:
            return False
        datas = []
        for head in heads:
            assert head.data is not None
            if _meta(head.data).get("checksum") != compute_checksum(_strip(head.data)):
                return False
            datas.append(_strip(head.data))
        missing = object()
        data = _strip(raw)
        for key in set(data).union(*datas):
            value = data.get(key, missing)
            if not any(_same_json(d.get(key, missing), value) for d in datas):
                return False
        return True

    def read_at_version(self, entity_id: str, version: int) -> Optional[Entity]:
        """The entity as of global ``version`` (the old store's rules, history from write records).

        At or above the current version: the current entity. Otherwise the data of the last
        write (in history order) stamped at or below ``version``; with none, an entity written only once is
        visible at any version >= 1 (the old quirk), anything else is None."""
        if version >= self.current_version():
            return self.read(entity_id)
        raw = self.records.get(entity_id)
        if raw is not None:
            stamp = _meta(raw).get("gv")
            if isinstance(stamp, int) and stamp <= version:
                return self.read(entity_id)
        writes = [w for w in self.records.history(entity_id) if w.version is not None]
        older = [w for w in writes if w.version is not None and w.version <= version]
        if older:
            last = older[-1]
            return None if last.data is None else self.build(entity_id, last.data)
        if len(writes) <= 1 and raw is not None and version >= 1:
            return self.read(entity_id)
        return None

    def history(self, entity_id: str) -> List[Dict[str, Any]]:
        """The old history lines: ``{global_version, timestamp, data}`` per overwrite or delete, data before it."""
        writes = [w for w in self.records.history(entity_id) if w.version is not None]
        lines = []
        for before, after in zip(writes, writes[1:]):
            if before.data is None:
                continue
            assert after.version is not None
            lines.append({"global_version": after.version - 1, "timestamp": after.at, "data": _strip(before.data)})
        return lines

    def base_clock(self, entity_id: str) -> Clock:
        """The write clock of the entity as this replica sees it now (cached)."""
        with self._clock_lock:
            cached = self._clocks.get(entity_id)
            generation = self._generation
        if cached is not None:
            return dict(cached)
        clock = self.records.clock(entity_id)
        with self._clock_lock:
            if generation == self._generation:
                self._clocks[entity_id] = clock
        return dict(clock)

    def read_for_update(
        self, entity_id: str, version: int
    ) -> Tuple[Optional[Entity], Clock, Optional[int], BoardSeen]:
        """The entity at ``version``, the clock seen with it (read together, no peer update in between), a
        token for :meth:`untouched_since` when what was read is the current record (else None), and what
        :meth:`board_moved` needs to tell whether its board object changed since (one board read in all)."""
        for _ in range(5):
            changes = self._board_changes
            with self._clock_lock:
                generation = self._generation
            with self._verify_lock:
                touches = self._touches.get(entity_id, 0)
            with self.replica.access.snapshot():
                current = version >= self.current_version()
                if current:
                    entity, stamp = self._read_stamped(entity_id)
                else:
                    stamp = self.board_stamp(entity_id)
                    entity = self.read_at_version(entity_id, version)
                clock = self.base_clock(entity_id)
            with self._clock_lock:
                if generation == self._generation:
                    break
        return entity, clock, touches if current and entity is not None else None, (stamp, changes)

    def board_moved(self, entity_id: str, seen: BoardSeen) -> bool:
        """True when the entity's board object changed since :meth:`read_for_update` returned ``seen``.

        No transaction changed the board since: nothing moved, no need to read it again."""
        stamp, changes = seen
        return changes != self._board_changes and self.board_stamp(entity_id) != stamp

    def untouched_since(self, entity_id: str, token: int) -> bool:
        """True when no transaction (local or a peer's) changed the record since ``token`` was taken."""
        with self._verify_lock:
            return self._touches.get(entity_id, 0) == token

    def _note_write(self, entity_id: str, write: WriteRecord) -> None:
        with self._clock_lock:
            cached = self._clocks.get(entity_id)
            if cached is not None:
                self._clocks[entity_id] = join([cached, write.clock])

    def verify_all(self) -> List[str]:
        """Ids of stored entities that fail verification (checksum, type or build).

        The first call verifies every record (unless the marker of a previous run matches
        the state this replica opened with); later calls only those changed since."""
        with self._verify_lock:
            full = self._bad is None
            if full:
                marker = self._read_marker()
                if marker is not None and marker.get("fingerprint") == self._opened_fingerprint:
                    self._bad = {str(entity_id) for entity_id in marker.get("bad", [])}
                    full = False
                else:
                    self._dirty.clear()
        if full:
            # Outside the lock: reading may apply other processes' records, whose observer
            # takes it; what they change while the scan runs is dirty and checked below.
            found = set(self._check_all())
            with self._verify_lock:
                if self._bad is None:
                    self._bad = found
        with self._verify_lock:
            dirty, self._dirty = self._dirty, set()
        for entity_id in dirty:
            raw = self.records.get(entity_id)
            ok = raw is None or self._verifies(entity_id, raw)
            with self._verify_lock:
                assert self._bad is not None
                if ok:
                    self._bad.discard(entity_id)
                else:
                    self._bad.add(entity_id)
        with self._verify_lock:
            assert self._bad is not None
            return sorted(self._bad)

    def _check_all(self) -> List[str]:
        stored = self.records.all()
        bad = [entity_id for entity_id in self.records.ids() if entity_id not in stored]
        bad.extend(entity_id for entity_id, raw in stored.items() if not self._verifies(entity_id, raw))
        return bad

    def _verifies(self, entity_id: str, raw: Mapping[str, Any]) -> bool:
        if "__invalid__" in raw and len(raw) == 1:
            return False
        try:
            self.build(entity_id, raw, merged=True)
        except (CorruptionError, ValueError):
            return False
        return True

    def _marker_path(self) -> Optional[Path]:
        return self.replica.datadir.path / VERIFIED_MARKER if self.replica.datadir is not None else None

    def _read_marker(self) -> Optional[Dict[str, Any]]:
        path = self._marker_path()
        if path is None:
            return None
        try:
            marker = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return marker if isinstance(marker, dict) else None

    def save_marker(self) -> None:
        """Record which entities are bad for the state as it is now (called when the replica closes)."""
        path = self._marker_path()
        if path is None or self._bad is None:
            return
        bad = self.verify_all()
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint(), "bad": bad}), encoding="utf-8")
        os.replace(tmp, path)

    def written_by(self, entity_id: str, tx_id: str) -> Optional[int]:
        """The global version at which transaction ``tx_id`` wrote the entity, or None if it never did."""
        for write in self.records.history(entity_id):
            if write.data is not None and _meta(write.data).get("tx") == tx_id:
                return write.version
        return None

    # ------------------------------------------------------------------- writing

    def prepare(self, entity: Entity, *, validate: bool = True) -> _Prepared:
        """Validate ``entity`` and compute what its write will store, without touching anything."""
        if validate:
            validate_entity(entity)
        try:
            check_id(ENTITIES_COLLECTION, entity.id)
        except ValueError as exc:
            raise ValidationError(
                f"Invalid entity id {shown(entity.id)}: {exc}", entity_type=entity.entity_type, errors=[str(exc)]
            ) from None
        bumped = _shallow_copy(entity)
        bumped.bump_version()
        data = bumped.to_dict()
        try:
            check_json(data, "entity")
        except ValueError as exc:
            raise ValidationError(
                f"Entity {entity.id} holds a value the replica cannot store: {exc}",
                entity_type=entity.entity_type,
                errors=[str(exc)],
            ) from None
        on_board = True
        try:
            check_projection(data)
        except ValidationError:
            if validate:
                raise
            on_board = False
        return _Prepared(entity, bumped, data, stored_checksum(data), on_board)

    def put_batch(
        self,
        entities: Sequence[Entity],
        *,
        validate: bool = True,
        tx_id: Optional[str] = None,
        bases: Optional[Mapping[str, Clock]] = None,
        check: Optional[Callable[[], List[Any]]] = None,
    ) -> BatchResult:
        """Write every entity (version bumped, global version + 1) in one replica transaction.

        ``check`` runs first, inside the transaction (so no peer update slips in between);
        if it returns anything, nothing is written and that is returned as ``refused``. The
        caller's objects get the new ``version`` and ``modified_at`` once the batch is written."""
        prepared = [self.prepare(entity, validate=validate) for entity in entities]
        with self.replica.transaction(wait=False):
            if check is not None:
                refused = check()
                if refused:
                    return BatchResult(None, list(refused), self.replica.last_lsn)
            version = self.current_version() + 1
            written_at = utc_now_iso()
            self._mark_layout()
            for item in prepared:
                body = dict(item.data)
                body[META_KEY] = {"checksum": item.checksum, "tx": tx_id, "gv": version, "written_at": written_at}
                if item.on_board:
                    body[META_KEY]["board"] = BOARD_LAYOUT
                entity_id = item.entity.id
                base = bases.get(entity_id) if bases is not None else None
                if base is None:
                    base = self.base_clock(entity_id)
                previous = self.records.get(entity_id)
                self._note_write(
                    entity_id, self.records.put(entity_id, body, base=base, version=version, current=previous)
                )
                if item.on_board:
                    self.board.put(item.data, previous)
                else:
                    self._off_board(previous)
            self._count_commit(version)
        for item in prepared:
            item.entity.version = item.bumped.version
            item.entity.modified_at = item.bumped.modified_at
        return BatchResult(version, [], self.replica.last_lsn)

    def _off_board(self, previous: Optional[Mapping[str, Any]]) -> None:
        """Take an entity's old board object away: its new data (written unvalidated) cannot go there."""
        place = self._snapshot_place(previous) if previous is not None and previous.get("entity_type") else None
        if place is not None:
            self.board.remove(place)

    def put_raw(
        self, entity_id: str, data: Dict[str, Any], *, version: int, source: Optional[Dict[str, Any]] = None
    ) -> None:
        """Store ``data`` exactly as given (migration), checksummed, stamped with ``version``, and put it on the board.

        ValidationError, before anything is written, when it cannot go on the board."""
        check_projection(data)
        body = dict(data)
        meta: Dict[str, Any] = {
            "checksum": stored_checksum(data),
            "tx": None,
            "gv": version,
            "written_at": utc_now_iso(),
            "board": BOARD_LAYOUT,
        }
        if source:
            meta["source"] = source
        body[META_KEY] = meta
        with self.replica.transaction(wait=False):
            self._mark_layout()
            previous = self.records.get(entity_id)
            self._note_write(
                entity_id, self.records.put(entity_id, body, base=self.base_clock(entity_id), version=version)
            )
            self.board.put(data, previous)

    def delete(self, entity_id: str) -> Tuple[bool, int]:
        """Delete the entity (global version + 1); (False, lsn) when it does not exist."""
        with self.replica.transaction(wait=False):
            if not self.exists(entity_id):
                return False, self.replica.last_lsn
            version = self.current_version() + 1
            self.delete_raw(entity_id, version=version)
            self._count_commit(version)
        return True, self.replica.last_lsn

    def delete_raw(self, entity_id: str, *, version: int, resolves: Iterable[str] = ()) -> None:
        """Delete the entity from the board and its snapshot, the write stamped with ``version`` (no global
        version change)."""
        with self.replica.transaction(wait=False):
            raw, place = self._locate(entity_id)
            if place is not None:
                self.board.remove(place)
            if raw is not None:
                base = self.base_clock(entity_id)
                self._note_write(
                    entity_id, self.records.delete(entity_id, base=base, resolves=resolves, version=version)
                )

    # ----------------------------------------------------------------- conflicts

    def conflicts(self, entity_id: Optional[str] = None, *, include_settled: bool = False) -> List[FieldConflict]:
        """Recorded cross-replica conflicts (unsettled unless asked), identical on every synced replica."""
        return self.records.conflicts(entity_id, include_settled=include_settled)

    def find_conflict(self, conflict_id: str) -> FieldConflict:
        """A conflict by id, settled or not (replica NotFoundError when unknown)."""
        return self.records.find_conflict(conflict_id)

    def is_settled(self, conflict: FieldConflict) -> bool:
        """True once a write that saw both sides settled the conflict."""
        return all(c.id != conflict.id for c in self.records.conflicts(conflict.record_id))

    def settle(
        self,
        conflict: FieldConflict,
        values: Mapping[str, Any],
        *,
        delete: bool = False,
        keep: Optional[Mapping[str, Any]] = None,
    ) -> Tuple[Optional[Entity], int]:
        """Write the resolution of ``conflict``: the current entity with ``values`` over it, or a delete.

        ``keep`` is the data to start from when the record is gone (the surviving side of a
        delete-versus-update conflict). The write's clock dominates both sides and it names
        the conflict, so it replicates, never flaps, and a concurrent resolution of the same
        conflict elsewhere converges with it instead of conflicting."""
        entity_id = conflict.record_id
        with self.replica.transaction(wait=False):
            base = join([self.base_clock(entity_id), conflict.left.clock, conflict.right.clock])
            version = self.current_version() + 1
            current = self.records.get(entity_id)
            if delete:
                if current is None:
                    write = self.records.resolve(conflict, {}, version=version)
                    self._note_write(entity_id, write)
                else:
                    place = self.place(entity_id)
                    if place is not None:
                        self.board.remove(place)
                    self._note_write(
                        entity_id, self.records.delete(entity_id, base=base, resolves=(conflict.id,), version=version)
                    )
                self._count_commit(version)
                resolved: Optional[Entity] = None
            else:
                place = self.place(entity_id) if current is not None else None
                composed = self.board.compose(entity_id, _strip(current), place) if place is not None else None
                start = composed or (_strip(current) if current is not None else dict(keep or {}))
                merged = {**start, **{k: v for k, v in values.items() if k != "__deleted__"}}
                cls = entity_class(merged.get("entity_type"), entity_id)
                entity = cls.from_dict(merged)
                item = self.prepare(entity)
                body = dict(item.data)
                body[META_KEY] = {
                    "checksum": item.checksum,
                    "tx": f"resolve:{conflict.id}",
                    "gv": version,
                    "written_at": utc_now_iso(),
                    "board": BOARD_LAYOUT,
                }
                self._note_write(
                    entity_id, self.records.put(entity_id, body, base=base, resolves=(conflict.id,), version=version)
                )
                self.board.put(item.data, current)
                self._count_commit(version)
                resolved = item.bumped
        return resolved, self.replica.last_lsn

    # ---------------------------------------------------------------- durability

    def settle_durably(self, lsn: int, durability: DurabilityMode) -> None:
        """Return once the log holds everything up to ``lsn`` on disk, as ``durability`` promises.

        RELAXED never waits. Otherwise one group fsync covers every commit waiting at once;
        a replica opened in a weaker mode (lazy) is flushed explicitly."""
        if durability is DurabilityMode.RELAXED:
            return
        mode = self.replica.durability
        if mode is None:
            return
        if mode is Durability.LAZY:
            self.replica.flush()
        else:
            self.replica.wait_durable(lsn)


def _on_board(raw: Optional[Mapping[str, Any]]) -> bool:
    """True when a snapshot was written with its board object (else it stands alone: an older peer's)."""
    return raw is not None and _meta(raw).get("board") == BOARD_LAYOUT


def _same_json(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=repr) == json.dumps(b, sort_keys=True, default=repr)


_ENTITIES: "OnceMap[Replica, ReplicaEntities]" = OnceMap()


def entities_for(replica: Replica) -> ReplicaEntities:
    """The one :class:`ReplicaEntities` of ``replica`` (created on first use, outside any registry lock)."""
    return _ENTITIES.get(replica, lambda: ReplicaEntities(replica))


def default_replica_dir(store_dir: PathLike) -> Path:
    """Where a store's replica lives: the got directory for ``<got_dir>/entities``, else the store directory."""
    path = Path(store_dir)
    return path.parent if path.name == "entities" else path


# ----------------------------------------------------------------- the old API


class VersionedStore:
    """The old versioned entity store over the replica of its directory.

    ``store_dir`` is created (with ``_history/``, kept for old callers that look for it);
    the replica lives in ``replica_dir`` (default: the got directory for
    ``<got_dir>/entities``, else ``store_dir``). ``peers``/``listen``/``token``/``room``
    (else ``agentstate.json`` in the replica directory, else the environment) make the
    replica sync with other agents; ``sync=False`` joins without starting anything."""

    def __init__(
        self,
        store_dir: PathLike,
        durability: DurabilityMode = DurabilityMode.BALANCED,
        validate_on_save: bool = True,
        *,
        replica_dir: Optional[PathLike] = None,
        peers: Optional[Union[Sequence[str], str]] = None,
        listen: Optional[str] = None,
        token: Optional[str] = None,
        room: Optional[str] = None,
        sync: bool = True,
    ) -> None:
        self.store_dir: Path = Path(store_dir)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.history_dir: Path = self.store_dir / HISTORY_DIR_NAME
        self.history_dir.mkdir(exist_ok=True)
        self.durability: DurabilityMode = DurabilityMode(durability)
        self.validate_on_save: bool = validate_on_save
        self.replica_dir: Path = Path(replica_dir) if replica_dir is not None else default_replica_dir(self.store_dir)
        network = (
            sharing.network_options(self.replica_dir, peers=peers, listen=listen, token=token, room=room)
            if sync
            else None
        )
        self._lease = sharing.lease(self, self.replica_dir, self.durability, network)
        self.entities: ReplicaEntities = entities_for(self._lease.shared.replica)
        self._lease.shared.add_closing_hook(self.entities.save_marker)

    @property
    def replica(self) -> Replica:
        """The replica holding the entities."""
        return self._lease.shared.replica

    @property
    def shared(self) -> sharing.SharedReplica:
        """The registry entry this store uses (its commit lock and network services)."""
        return self._lease.shared

    # ------------------------------------------------------------------- reading

    def current_version(self) -> int:
        """The global version: 0 for an empty store, +1 per commit on any replica."""
        return self.entities.current_version()

    def read(self, entity_id: str) -> Optional[Entity]:
        """The entity (its own class), None when absent; CorruptionError on a checksum mismatch."""
        return self.entities.read(entity_id)

    def read_at_version(self, entity_id: str, version: int) -> Optional[Entity]:
        """The entity as of global ``version`` (see :meth:`ReplicaEntities.read_at_version`)."""
        return self.entities.read_at_version(entity_id, version)

    def exists(self, entity_id: str) -> bool:
        """True if the entity exists."""
        return self.entities.exists(entity_id)

    def history(self, entity_id: str) -> List[Dict[str, Any]]:
        """Old-style history lines ``{global_version, timestamp, data}``: one per overwrite or delete."""
        return self.entities.history(entity_id)

    def ids(self) -> List[str]:
        """Ids of every entity that exists."""
        return self.entities.ids()

    def _read_and_verify(self, path_or_id: Union[PathLike, str]) -> Dict[str, Any]:
        """The old wrapper ``{_checksum, _written_at, data}`` of a verified entity (an id or ``<id>.json``)."""
        entity_id = Path(path_or_id).stem if str(path_or_id).endswith(".json") else str(path_or_id)
        entity = self.entities.read(entity_id)
        if entity is None:
            raise FileNotFoundError(f"no entity {entity_id} in {self.entities.where(entity_id)}")
        raw = self.entities.raw(entity_id) or {}
        data = entity.to_dict()
        return {"_checksum": compute_checksum(data), "_written_at": _meta(raw).get("written_at"), "data": data}

    # ------------------------------------------------------------------- writing

    def write(self, entity: Entity) -> None:
        """Validate, bump the caller's object, store it and add 1 to the global version."""
        self.apply_writes({entity.id: entity})

    def apply_writes(self, write_set: Mapping[str, Entity]) -> int:
        """Write a batch atomically (one replica transaction) and return the new global version (+1 per batch).

        Everything is validated first; on any error nothing is written and it propagates."""
        result = self.entities.put_batch(list(write_set.values()), validate=self.validate_on_save)
        assert result.version is not None
        self.entities.settle_durably(result.lsn, self.durability)
        return result.version

    def delete(self, entity_id: str) -> bool:
        """Delete the entity (global version + 1); False when it does not exist."""
        deleted, lsn = self.entities.delete(entity_id)
        if deleted:
            self.entities.settle_durably(lsn, self.durability)
        return deleted

    def fsync_all(self) -> None:
        """Make everything written so far durable, whatever the mode."""
        self.replica.flush()

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Stop using the replica (it closes when its last user does); idempotent."""
        self._lease.close()

    def __enter__(self) -> "VersionedStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = [
    "VersionedStore",
    "ReplicaEntities",
    "GenericEntity",
    "BatchResult",
    "entities_for",
    "entity_class",
    "schema_errors",
    "validate_entity",
    "default_replica_dir",
    "ENTITIES_COLLECTION",
    "VERSION_COUNTER",
    "META_KEY",
    "IGNORED_FIELDS",
    "stored_checksum",
]
