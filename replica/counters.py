"""PN-counters: exact integer counters that any number of replicas can change concurrently.

Each slot is one entry of the counters root map, keyed `<name>|<client id>.p` (increments)
or `<name>|<client id>.n` (decrements). A slot belongs to one writer incarnation (the
Doc's client id, fresh at every start), so no two concurrent writes ever target one slot,
not even after a crash lost the log's tail. Slots live directly in the root map, never in
a per-counter nested map: two replicas creating the same counter concurrently would each
create their own nested map under one key, and Yjs keeps only one of them, losing the
other's increments. The value is the sum of increments minus the sum of decrements.
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

SLOT_SEPARATOR = "|"


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


def slot_key(name: str, client_id: int, sign: str) -> str:
    """The root-map key of one writer's increment (`p`) or decrement (`n`) slot of a counter."""
    return f"{name}{SLOT_SEPARATOR}{client_id}.{sign}"


def split_slot_key(key: str) -> tuple[str, int] | None:
    """(counter name, +1 or -1) of a slot key, or None if a peer wrote a malformed key."""
    name, sep, slot = key.rpartition(SLOT_SEPARATOR)
    if not sep or not name or SLOT_SEPARATOR in name:
        return None
    client, dot, sign = slot.partition(".")
    if not dot or not client.isdigit() or sign not in ("p", "n"):
        return None
    return name, (1 if sign == "p" else -1)


def _amount(by: Any) -> int:
    if isinstance(by, bool) or not isinstance(by, int) or by < 1:
        raise FieldError("counter", "by", f"must be a positive integer; got {by!r}")
    return by


class Counters:
    """Named PN-counters with exact integer values."""

    def __init__(self, replica: Replica) -> None:
        self._replica = replica
        self._root = replica.doc.get(COUNTERS, type=Map)
        self._by_name: dict[str, set[str]] | None = None
        self._root.observe(self._on_change)

    def _on_change(self, event: Any) -> None:
        """Keep the name -> slot keys index current, key by key, after every transaction."""
        index = self._by_name
        if index is None:
            return
        for key, change in event.keys.items():
            parts = split_slot_key(key)
            if parts is None:
                continue
            keys = index.setdefault(parts[0], set())
            if change["action"] == "delete":
                keys.discard(key)
                if not keys:
                    del index[parts[0]]
            else:
                keys.add(key)

    def _index(self) -> dict[str, set[str]]:
        """Counter name -> its slot keys (built on first use, then kept by `_on_change`)."""
        if self._by_name is None:
            index: dict[str, set[str]] = {}
            for key in self._root.keys():
                parts = split_slot_key(key)
                if parts is not None:
                    index.setdefault(parts[0], set()).add(key)
            self._by_name = index
        return self._by_name

    def _slot_keys(self, name: str) -> set[str]:
        """Every slot key of `name`, including this writer's own, possibly written in the open transaction."""
        client = self._replica.doc.client_id
        return self._index().get(name, set()) | {slot_key(name, client, "p"), slot_key(name, client, "n")}

    def _total(self, name: str) -> tuple[int, list[str], bool]:
        """(value, problems, exists) of a counter; junk slots count as nothing and are reported."""
        total = 0
        bad: list[str] = []
        exists = False
        for key in self._slot_keys(name):
            if key not in self._root:
                continue
            exists = True
            raw = self._root[key]
            value = slot_value(raw)
            if value is None:
                bad.append(f"slot {key}: {raw!r} is not a non-negative integer")
                continue
            sign = split_slot_key(key)[1]  # type: ignore[index]
            total += sign * value
        return total, bad, exists

    def _add(self, name: str, sign: str, by: int) -> int:
        check_id("counter", name, "name")
        amount = _amount(by)
        with self._replica._write():
            key = slot_key(name, self._replica.doc.client_id, sign)
            current = slot_value(self._root.get(key, 0.0)) or 0
            self._root[key] = store_value(current + amount)
            return self._total(name)[0]

    def incr(self, name: str, by: int = 1) -> int:
        """Add `by` (a positive integer) and return the new value."""
        return self._add(name, "p", by)

    def decr(self, name: str, by: int = 1) -> int:
        """Subtract `by` (a positive integer) and return the new value."""
        return self._add(name, "n", by)

    def value(self, name: str) -> int:
        """The counter's exact value; 0 for a counter never touched. Junk slots are ignored."""
        with self._replica._lock:
            return self._total(name)[0]

    def get(self, name: str) -> int:
        """The counter's value; NotFoundError if no replica ever touched it."""
        with self._replica._lock:
            total, _, exists = self._total(name)
        if not exists:
            raise NotFoundError("counter", name)
        return total

    def all(self) -> dict[str, int]:
        """Every counter and its value."""
        with self._replica._lock:
            return {name: self._total(name)[0] for name in sorted(self._index())}

    def invalid(self) -> list[InvalidRecord]:
        """Counters holding slots a peer filled with junk, and root entries that are not slots at all."""
        bad = []
        with self._replica._lock:
            for name in sorted(self._index()):
                problems = self._total(name)[1]
                if problems:
                    bad.append(InvalidRecord(kind="counter", id=name, problems=problems))
            for key in self._root.keys():
                if split_slot_key(key) is None:
                    bad.append(InvalidRecord(kind="counter", id=key,
                                             problems=["key is not <name>|<client id>.p or .n"]))
        return bad

    def translate(self, events: list[Any], origin: str, peer: str | None) -> list[ChangeEvent]:
        """One event per counter changed in a transaction, with its old and new value."""
        deltas: dict[str, int] = {}
        for event in events:
            if list(event.path):
                continue
            for key, change in event.keys.items():
                parts = split_slot_key(key)
                if parts is None:
                    continue
                old = slot_value(change.get("oldValue", 0.0)) or 0
                new = slot_value(change.get("newValue", 0.0)) or 0
                deltas[parts[0]] = deltas.get(parts[0], 0) + parts[1] * (new - old)
        out: list[ChangeEvent] = []
        for name, delta in deltas.items():
            value = self.value(name)
            out.append(ChangeEvent("counter", name, None, "update", value - delta, value, origin, peer))  # type: ignore[arg-type]
        return out
