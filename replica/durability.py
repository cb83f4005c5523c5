"""Durability modes: how far a write has travelled towards the disk when it returns."""

from __future__ import annotations

from enum import Enum


class Durability(str, Enum):
    """PARANOID fsyncs every record; BALANCED group-commits; LAZY never fsyncs."""

    PARANOID = "paranoid"
    BALANCED = "balanced"
    LAZY = "lazy"

    @classmethod
    def parse(cls, value: "str | Durability") -> "Durability":
        """Accept a member or its name in any case, with a clear error otherwise."""
        if isinstance(value, Durability):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown durability mode {value!r} (expected one of {names})") from None
