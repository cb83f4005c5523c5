"""Transaction record of the old ``cortical.got`` API.

A ``Transaction`` only carries state (id, snapshot, read and write sets); the
transaction manager enforces the state transitions.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, Mapping, Optional

from compat.types import Entity
from replica.models import SecondStamp


class TransactionState(Enum):
    """Lifecycle of a transaction; ABORTED means the commit failed, ROLLED_BACK an explicit undo."""

    ACTIVE = "active"
    PREPARING = "preparing"
    COMMITTED = "committed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"


_TX_SECOND = SecondStamp("%Y%m%d-%H%M%S")


_ID_BITS = random.Random()
"""This module's own generator, seeded from the OS (a caller seeding ``random`` cannot make two processes
draw the same ids) and seeded afresh in a forked child; it costs no system call per id, as ``secrets`` does."""
os.register_at_fork(after_in_child=_ID_BITS.seed)


def generate_transaction_id() -> str:
    """A new id ``TX-YYYYMMDD-HHMMSS-xxxxxxxx``: UTC time plus 8 random hex characters."""
    return f"TX-{_TX_SECOND.format(int(time.time()))}-{_ID_BITS.getrandbits(32):08x}"


@dataclass
class Transaction:
    """One transaction: its snapshot version, the versions it read and the entities it will write."""

    id: str
    state: TransactionState
    started_at: str
    snapshot_version: int
    write_set: Dict[str, Entity] = field(default_factory=dict)
    read_set: Dict[str, int] = field(default_factory=dict)

    def is_active(self) -> bool:
        """True only in ACTIVE."""
        return self.state is TransactionState.ACTIVE

    def can_commit(self) -> bool:
        """True only in ACTIVE: a transaction commits once."""
        return self.state is TransactionState.ACTIVE

    def can_rollback(self) -> bool:
        """True in ACTIVE or PREPARING, the states that have not reached an outcome yet."""
        return self.state in (TransactionState.ACTIVE, TransactionState.PREPARING)

    def add_read(self, entity_id: str, version: int) -> None:
        """Record (or overwrite) the version seen for ``entity_id``; commit checks it for conflicts."""
        self.read_set[entity_id] = version

    def add_write(self, entity: Entity) -> None:
        """Buffer ``entity`` itself (no copy) under its id until commit."""
        self.write_set[entity.id] = entity

    def get_write(self, entity_id: str) -> Optional[Entity]:
        """The buffered entity for ``entity_id``, or None."""
        return self.write_set.get(entity_id)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form: state as its value, write-set entities as dicts."""
        return {
            "id": self.id,
            "state": self.state.value,
            "started_at": self.started_at,
            "snapshot_version": self.snapshot_version,
            "write_set": {entity_id: entity.to_dict() for entity_id, entity in self.write_set.items()},
            "read_set": dict(self.read_set),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Transaction":
        """Rebuild from ``to_dict()`` output; write-set entries come back as base ``Entity``."""
        return cls(
            id=data["id"],
            state=TransactionState(data["state"]),
            started_at=data["started_at"],
            snapshot_version=data["snapshot_version"],
            write_set={entity_id: Entity.from_dict(entity) for entity_id, entity in data.get("write_set", {}).items()},
            read_set=dict(data.get("read_set", {})),
        )


__all__ = ["Transaction", "TransactionState", "generate_transaction_id"]
