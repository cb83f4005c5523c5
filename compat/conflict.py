"""Sync conflict detection and resolution of the old ``cortical.got`` API.

This module holds the dictionary-based part: compare two maps of entities,
report the ids whose versions and content diverge, and settle each with OURS,
THEIRS or MERGE. ``ConflictResolver`` keeps one method per strategy so that the
replica-backed conflict records can reuse (or subclass) the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Union

from compat.errors import ConflictError
from compat.types import Entity

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
    "ConflictResolver",
    "ConflictStrategy",
    "SyncConflict",
    "IGNORED_FIELDS",
    "differing_fields",
    "as_strategy",
]
