"""Sync conflict detection and resolution of the old ``cortical.got`` API.

Two halves. The dictionary-based part of the old API: compare two maps of entities,
report the ids whose versions and content diverge, and settle each with OURS, THEIRS or
MERGE. And the replica part: conflicts *recorded* in the shared state when two replicas
committed to the same entity without seeing each other (``recorded_conflicts``), settled
by a resolution write (``resolve_recorded``) that every replica receives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Tuple, Union

from compat.config import DurabilityMode
from compat.errors import ConflictError
from compat.types import Entity
from compat.versioned_store import ReplicaEntities, entities_for
from replica import Replica
from replica.records import FieldConflict, WriteRecord

DELETED_FIELD = "__deleted__"
"""Pseudo-field of a conflict between a delete and a concurrent update."""

IGNORED_FIELDS: FrozenSet[str] = frozenset({"created_at", "modified_at", "version"})
"""Bookkeeping fields that never count as a conflicting change."""


class ConflictStrategy(Enum):
    """How to settle a conflict: keep the local side, take the remote side, or merge."""

    OURS = "ours"
    THEIRS = "theirs"
    MERGE = "merge"


@dataclass
class SyncConflict:
    """An entity present on both sides at different versions with differing content."""

    entity_id: str
    entity_type: str
    local_version: int
    remote_version: int
    conflict_fields: List[str] = field(default_factory=list)


@dataclass
class RecordedConflict(SyncConflict):
    """A conflict recorded across replicas: both sides' values of every field both changed.

    ``local_version``/``ours`` are the side this replica wrote (when exactly one side is
    from this replica; otherwise the side whose values the merged entity shows now),
    ``remote_version``/``theirs`` the other side. ``conflict_id`` is the same on every
    replica. A delete against an update lists the pseudo-field ``__deleted__``."""

    conflict_id: str = ""
    ours: Dict[str, Any] = field(default_factory=dict)
    theirs: Dict[str, Any] = field(default_factory=dict)
    ours_writer: str = ""
    theirs_writer: str = ""
    ours_at: str = ""
    theirs_at: str = ""
    ours_deleted: bool = False
    theirs_deleted: bool = False
    settled: bool = False

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form (for the CLI and logs)."""
        return {
            "conflict_id": self.conflict_id,
            "entity_id": self.entity_id,
            "entity_type": self.entity_type,
            "conflict_fields": list(self.conflict_fields),
            "settled": self.settled,
            "ours": {
                "writer": self.ours_writer,
                "at": self.ours_at,
                "version": self.local_version,
                "deleted": self.ours_deleted,
                "values": dict(self.ours),
            },
            "theirs": {
                "writer": self.theirs_writer,
                "at": self.theirs_at,
                "version": self.remote_version,
                "deleted": self.theirs_deleted,
                "values": dict(self.theirs),
            },
        }


ConflictSource = Union[ReplicaEntities, Replica, Any]
"""Where recorded conflicts live: a VersionedStore, a TransactionManager, a Replica or its ReplicaEntities."""


def entities_of(source: ConflictSource) -> ReplicaEntities:
    """The replica entity store behind ``source``; TypeError for anything else."""
    if isinstance(source, ReplicaEntities):
        return source
    if isinstance(source, Replica):
        return entities_for(source)
    store = getattr(source, "store", source)
    found = getattr(store, "entities", None)
    if isinstance(found, ReplicaEntities):
        return found
    raise TypeError(f"no replica behind {type(source).__name__}: pass a VersionedStore, TransactionManager or Replica")


def _durability_of(source: ConflictSource) -> DurabilityMode:
    mode = getattr(source, "durability", None)
    return mode if isinstance(mode, DurabilityMode) else DurabilityMode.BALANCED


def _writer_replica(write: WriteRecord) -> str:
    return write.writer.rsplit(".", 1)[0]


def _sides(entities: ReplicaEntities, conflict: FieldConflict) -> Tuple[WriteRecord, WriteRecord]:
    """(ours, theirs): our replica's side when exactly one is ours, else the side the merged record shows."""
    mine = entities.replica.replica_id
    left, right = conflict.left, conflict.right
    left_mine, right_mine = _writer_replica(left) == mine, _writer_replica(right) == mine
    if left_mine != right_mine:
        return (left, right) if left_mine else (right, left)
    current = entities.raw(conflict.record_id)
    if current is None:
        return (left, right) if left.deleted or not right.deleted else (right, left)
    score = 0
    for name in conflict.fields:
        if name == DELETED_FIELD:
            continue
        value = current.get(name)
        score += (left.fields.get(name) == value) - (right.fields.get(name) == value)
    return (left, right) if score >= 0 else (right, left)


def _version_of(write: WriteRecord) -> int:
    version = write.data.get("version", 0) if write.data is not None else 0
    return version if isinstance(version, int) else 0


def recorded_conflict(entities: ReplicaEntities, conflict: FieldConflict, *, settled: bool = False) -> RecordedConflict:
    """The old-API view of a replica conflict record."""
    ours, theirs = _sides(entities, conflict)
    names = [name for name in conflict.fields if name != DELETED_FIELD]
    entity_type = ""
    for write in (ours, theirs):
        if write.data is not None and isinstance(write.data.get("entity_type"), str):
            entity_type = write.data["entity_type"]
            break
    return RecordedConflict(
        entity_id=conflict.record_id,
        entity_type=entity_type,
        local_version=_version_of(ours),
        remote_version=_version_of(theirs),
        conflict_fields=list(conflict.fields),
        conflict_id=conflict.id,
        ours={name: ours.fields.get(name) for name in names if name in ours.fields},
        theirs={name: theirs.fields.get(name) for name in names if name in theirs.fields},
        ours_writer=ours.writer,
        theirs_writer=theirs.writer,
        ours_at=ours.at,
        theirs_at=theirs.at,
        ours_deleted=ours.deleted,
        theirs_deleted=theirs.deleted,
        settled=settled,
    )


def differing_fields(local: Mapping[str, Any], remote: Mapping[str, Any]) -> List[str]:
    """Sorted names of the fields whose values differ, over the union of keys, bookkeeping ignored."""
    keys = (set(local) | set(remote)) - IGNORED_FIELDS
    missing = object()
    return sorted(key for key in keys if local.get(key, missing) != remote.get(key, missing))


def as_strategy(strategy: Union[ConflictStrategy, str]) -> ConflictStrategy:
    """Coerce a member or its value to a ``ConflictStrategy``; anything else raises ``ValueError``."""
    if isinstance(strategy, ConflictStrategy):
        return strategy
    try:
        return ConflictStrategy(strategy)
    except (ValueError, TypeError):
        raise ValueError(f"Unknown conflict strategy: {strategy!r}") from None


class ConflictResolver:
    """Detects sync conflicts between two entity maps and resolves them with a default strategy."""

    def __init__(self, strategy: ConflictStrategy = ConflictStrategy.OURS) -> None:
        self.strategy: ConflictStrategy = as_strategy(strategy)

    def detect_conflicts(
        self, local_entities: Mapping[str, Entity], remote_entities: Mapping[str, Entity]
    ) -> List[SyncConflict]:
        """Conflicts for ids on both sides whose versions differ and whose non-bookkeeping fields differ."""
        conflicts: List[SyncConflict] = []
        for entity_id, local in local_entities.items():
            remote = remote_entities.get(entity_id)
            if remote is None or local.version == remote.version:
                continue
            changed = differing_fields(local.to_dict(), remote.to_dict())
            if changed:
                conflicts.append(
                    SyncConflict(
                        entity_id=entity_id,
                        entity_type=local.entity_type,
                        local_version=local.version,
                        remote_version=remote.version,
                        conflict_fields=changed,
                    )
                )
        return conflicts

    def resolve(
        self,
        conflict: SyncConflict,
        local: Entity,
        remote: Entity,
        strategy: Optional[Union[ConflictStrategy, str]] = None,
    ) -> Entity:
        """The winning entity under ``strategy`` (default: the resolver's); unknown strategies raise ValueError."""
        chosen = self.strategy if strategy is None else as_strategy(strategy)
        if chosen is ConflictStrategy.OURS:
            return self._resolve_ours(conflict, local, remote)
        if chosen is ConflictStrategy.THEIRS:
            return self._resolve_theirs(conflict, local, remote)
        return self._resolve_merge(conflict, local, remote)

    def resolve_all(
        self,
        conflicts: List[SyncConflict],
        local_entities: Mapping[str, Entity],
        remote_entities: Mapping[str, Entity],
    ) -> Dict[str, Entity]:
        """Resolve every conflict with the default strategy; an id missing on either side raises KeyError."""
        return {
            conflict.entity_id: self.resolve(
                conflict, local_entities[conflict.entity_id], remote_entities[conflict.entity_id]
            )
            for conflict in conflicts
        }

    # ------------------------------------------------------- recorded conflicts

    def recorded_conflicts(
        self, source: ConflictSource, entity_id: Optional[str] = None, *, include_settled: bool = False
    ) -> List[RecordedConflict]:
        """Conflicts recorded in ``source``'s replica (unsettled unless asked), the same on every synced replica."""
        entities = entities_of(source)
        open_ids = {c.id for c in entities.conflicts(entity_id)}
        found = entities.conflicts(entity_id, include_settled=include_settled)
        return [recorded_conflict(entities, c, settled=c.id not in open_ids) for c in found]

    def resolve_recorded(
        self,
        source: ConflictSource,
        conflict: Union[RecordedConflict, str],
        strategy: Optional[Union[ConflictStrategy, str]] = None,
        values: Optional[Mapping[str, Any]] = None,
    ) -> Optional[Entity]:
        """Settle a recorded conflict and return the resulting entity (None when the result is a delete).

        OURS keeps our side's values, THEIRS the other side's; MERGE needs ``values`` for
        every conflicting field and raises ConflictError otherwise. ``values`` given with
        OURS or THEIRS override that side field by field. The resolution is one write that
        dominates both sides and names the conflict: it replicates, never flaps, and two
        replicas settling the same conflict at once converge. An already settled conflict
        is left alone (the current entity is returned)."""
        entities = entities_of(source)
        conflict_id = conflict if isinstance(conflict, str) else conflict.conflict_id
        found = entities.find_conflict(conflict_id)
        view = recorded_conflict(entities, found)
        if entities.is_settled(found):
            return entities.read(found.record_id)
        chosen = self.strategy if strategy is None else as_strategy(strategy)
        ours, theirs = _sides(entities, found)
        if chosen is ConflictStrategy.MERGE:
            needed = [name for name in view.conflict_fields if name != DELETED_FIELD]
            missing = [name for name in needed if values is None or name not in values]
            if values is None or missing:
                raise ConflictError(
                    f"Cannot auto-merge {view.entity_id}: conflicting fields {', '.join(view.conflict_fields)}"
                    + (f" (no value given for {', '.join(missing)})" if values is not None else ""),
                    entity_id=view.entity_id,
                    conflict_fields=list(view.conflict_fields),
                    conflict_id=conflict_id,
                )
            survivor = ours if not ours.deleted else theirs
            chosen_values = dict(values)
            delete = False
        else:
            survivor = ours if chosen is ConflictStrategy.OURS else theirs
            delete = survivor.deleted and not values
            chosen_values = {k: v for k, v in survivor.fields.items() if k in found.fields}
            if survivor.deleted:
                survivor = theirs if survivor is ours else ours
            chosen_values.update(values or {})
        keep = survivor.data if survivor.data is not None else None
        entity, lsn = entities.settle(found, chosen_values, delete=delete, keep=keep)
        entities.settle_durably(lsn, _durability_of(source))
        return entity

    def resolve_all_recorded(
        self, source: ConflictSource, strategy: Optional[Union[ConflictStrategy, str]] = None
    ) -> Dict[str, Optional[Entity]]:
        """Settle every unsettled recorded conflict with ``strategy`` (default: the resolver's), by conflict id."""
        return {
            conflict.conflict_id: self.resolve_recorded(source, conflict, strategy)
            for conflict in self.recorded_conflicts(source)
        }

    # --------------------------------------------------------- the strategies

    def _resolve_ours(self, conflict: SyncConflict, local: Entity, remote: Entity) -> Entity:
        """OURS: the local object itself."""
        return local

    def _resolve_theirs(self, conflict: SyncConflict, local: Entity, remote: Entity) -> Entity:
        """THEIRS: the remote object itself."""
        return remote

    def _resolve_merge(self, conflict: SyncConflict, local: Entity, remote: Entity) -> Entity:
        """MERGE: refuse recorded conflicting fields, else keep the higher version (local wins ties)."""
        if conflict.conflict_fields:
            raise ConflictError(
                f"Cannot auto-merge {conflict.entity_id}: conflicting fields {', '.join(conflict.conflict_fields)}",
                entity_id=conflict.entity_id,
                conflict_fields=list(conflict.conflict_fields),
            )
        return remote if remote.version > local.version else local


__all__ = [
    "RecordedConflict",
    "recorded_conflict",
    "entities_of",
    "DELETED_FIELD",
    "ConflictResolver",
    "ConflictStrategy",
    "SyncConflict",
    "IGNORED_FIELDS",
    "differing_fields",
    "as_strategy",
]
