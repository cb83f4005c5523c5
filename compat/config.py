"""Durability configuration of the old ``cortical.got`` API.

``DurabilityMode`` decides when WAL and store files are fsynced; ``GoTConfig``
bundles it for callers that pass a config object around.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional


class DurabilityMode(Enum):
    """When to fsync: every append (PARANOID), at commit (BALANCED) or never (RELAXED).

    ``LAZY`` (the old design documents' name) is an alias of RELAXED, so iteration still yields three members."""

    PARANOID = "paranoid"
    BALANCED = "balanced"
    RELAXED = "relaxed"
    LAZY = "relaxed"

    @classmethod
    def _missing_(cls, value: object) -> Optional["DurabilityMode"]:
        # Accept "lazy" and any capitalisation of a member's name or value.
        if isinstance(value, str):
            key = value.strip().lower()
            if key == "lazy":
                return cls.RELAXED
            for member in cls:
                if member.value == key:
                    return member
        return None

    @property
    def fsync_every_append(self) -> bool:
        """True when every WAL append and sequence update must reach the disk."""
        return self is DurabilityMode.PARANOID

    @property
    def fsync_at_commit(self) -> bool:
        """True when a commit must fsync what it wrote (BALANCED)."""
        return self is DurabilityMode.BALANCED

    @property
    def fsync_store_files(self) -> bool:
        """True when the entity store fsyncs its temporary and version files."""
        return self is not DurabilityMode.RELAXED


@dataclass
class GoTConfig:
    """Configuration bundle of the old API; today it only holds the durability mode."""

    durability: DurabilityMode = DurabilityMode.BALANCED

    def __post_init__(self) -> None:
        self.durability = DurabilityMode(self.durability)


__all__ = ["DurabilityMode", "GoTConfig"]
