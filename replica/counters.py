"""PN-counters: exact integer counters that any number of replicas can change concurrently.

Each counter is a Y.Map of slots. A slot belongs to one writer incarnation (the Doc's
client id, fresh at every start), so no two concurrent writes ever target one slot, not
even after a crash lost the log's tail. The value is the sum of increments minus the sum
of decrements over all slots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pycrdt import Map

from .changes import ChangeEvent
from .errors import FieldError, NotFoundError
from .models import MAX_SAFE_INT, InvalidRecord, check_id

from .schema import COUNTERS

if TYPE_CHECKING:
    from .replica import Replica


def slot_value(raw: Any) -> int | None:
    """A slot's value: a non-negative integer, stored as a number or, past 2**53, a decimal string."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, float) and raw.is_integer() and 0 <= raw <= MAX_SAFE_INT:
        return int(raw)
    if isinstance(raw, int) and 0 <= raw:
        return raw
    if isinstance(raw, str) and raw.isdigit() and len(raw) <= 40:
        return int(raw)
    return None


def store_value(value: int) -> float | str:
    """What a slot holds: a number while exact in a double, a decimal string beyond."""
    return float(value) if value <= MAX_SAFE_INT else str(value)


def _total(slots: Map) -> tuple[int, list[str]]:
    total = 0
    bad: list[str] = []
    for key, raw in slots.items():
        value = slot_value(raw)
        if value is None or not (key.endswith(".p") or key.endswith(".n")):
            bad.append(f"slot {key}: {raw!r} is not a non-negative integer")
            continue
        total += value if key.endswith(".p") else -value
    return total, bad


def _amount(by: Any) -> int:
    if isinstance(by, bool) or not isinstance(by, int) or by < 1:
        raise FieldError("counter", "by", f"must be a positive integer; got {by!r}")
    return by


class Counters:
    """Named PN-counters with exact integer values."""

    def __init__(self, replica: Replica) -> None:
        self._replica = replica
        self._root = replica.doc.get(COUNTERS, type=Map)

    def _slots(self, name: str) -> Map:
        slots = self._root.get(name)
        if not isinstance(slots, Map):
            slots = self._root[name] = Map()
        return slots

    def _add(self, name: str, suffix: str, by: int) -> int:
        check_id("counter", name, "name")
        amount = _amount(by)
        with self._replica._write():
            slots = self._slots(name)
            key = f"{self._replica.doc.client_id}.{suffix}"
            current = slot_value(slots.get(key, 0.0)) or 0
            slots[key] = store_value(current + amount)
            return _total(slots)[0]

    def incr(self, name: str, by: int = 1) -> int:
        """Add `by` (a positive integer) and return the new value."""
        return self._add(name, "p", by)

    def decr(self, name: str, by: int = 1) -> int:
        """Subtract `by` (a positive integer) and return the new value."""
        return self._add(name, "n", by)

    def value(self, name: str) -> int:
        """The counter's exact value; 0 for a counter never touched. Junk slots are ignored."""
        with self._replica._lock:
            slots = self._root.get(name)
            if not isinstance(slots, Map):
                return 0
            return _total(slots)[0]

    def get(self, name: str) -> int:
        """The counter's value; NotFoundError if no replica ever touched it."""
        with self._replica._lock:
            if name not in self._root:
                raise NotFoundError("counter", name)
        return self.value(name)

    def all(self) -> dict[str, int]:
        """Every counter and its value."""
        with self._replica._lock:
            return {name: _total(slots)[0] for name, slots in self._root.items() if isinstance(slots, Map)}

    def invalid(self) -> list[InvalidRecord]:
        """Counters holding slots a peer filled with junk."""
        bad = []
        with self._replica._lock:
            for name, slots in self._root.items():
                if not isinstance(slots, Map):
                    bad.append(InvalidRecord(kind="counter", id=name, problems=["record is not a map"]))
                    continue
                problems = _total(slots)[1]
                if problems:
                    bad.append(InvalidRecord(kind="counter", id=name, problems=problems))
        return bad

    def translate(self, events: list[Any], origin: str, peer: str | None) -> list[ChangeEvent]:
        """One event per counter changed in a transaction, with its old and new value."""
        out: list[ChangeEvent] = []
        for event in events:
            path = [str(p) for p in event.path]
            if not path:
                for key, change in event.keys.items():
                    if change["action"] == "delete":
                        out.append(ChangeEvent("counter", key, None, "delete", None, None, origin, peer))  # type: ignore[arg-type]
                    else:
                        out.append(ChangeEvent("counter", key, None, "update", 0, self.value(key), origin, peer))  # type: ignore[arg-type]
                continue
            name = path[0]
            delta = 0
            for key, change in event.keys.items():
                old = slot_value(change.get("oldValue", 0.0)) or 0
                new = slot_value(change.get("newValue", 0.0)) or 0
                delta += (new - old) if key.endswith(".p") else (old - new)
            value = self.value(name)
            out.append(ChangeEvent("counter", name, None, "update", value - delta, value, origin, peer))  # type: ignore[arg-type]
        return out
