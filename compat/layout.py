"""Which layout a directory's compat entities are in, and whether opening it must upgrade it.

Kept apart from compat.versioned_store so that the application can make the check on every
open for the cost of two lookups, importing the rest of compat only when an upgrade is due.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from pycrdt import Map

from replica import Replica
from replica.schema import plain

ENTITIES_COLLECTION = "got_entities"
"""Replica collection holding the entities."""

LAYOUT_COLLECTION = "got_layout"
"""Replica collection saying which layout a directory's entities are in."""

LAYOUT_RECORD = "board"
BOARD_LAYOUT = 2
"""Layout 2: entities on the board (tasks, graph nodes, graph edges) with their snapshots beside them.
Layout 1 (no record) kept them in ``got_entities`` only."""


def layout_current(record: Optional[Mapping[str, Any]]) -> bool:
    """True when a layout record says the entities are on the board."""
    return isinstance(record, Mapping) and record.get("layout") == BOARD_LAYOUT


def needs_upgrade(replica: Replica) -> bool:
    """True when the replica holds compat entities but no record that they are on the board (layout 1)."""
    with replica.access.read():
        entities = replica.doc.get(ENTITIES_COLLECTION, type=Map)
        if len(entities) == 0:
            return False
        record = replica.doc.get(LAYOUT_COLLECTION, type=Map).get(LAYOUT_RECORD)
        return not layout_current(plain(record) if record is not None else None)


def upgrade_on_open(replica: Replica) -> list[str]:
    """Upgrade a directory of the previous layout in place when it needs it; the entities that could not go on the board."""
    if not needs_upgrade(replica):
        return []
    from compat.versioned_store import entities_for

    return list(entities_for(replica).upgrade_problems)
