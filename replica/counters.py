"""PN-counters: exact integer counters that any number of replicas can change concurrently.

Layout (docs/schema.md): each slot is one entry of the counters root map, keyed
`<name>|<owner>` where owner is the writer's Yjs client id, holding a plain object
`{"p": increments, "n": decrements}`. A slot belongs to one writer incarnation (client
ids are fresh at every start), so no two concurrent writes ever target one key, not even
after a crash lost the log's tail. Slots live directly in the root map, never in a
per-counter nested map: two replicas creating one counter concurrently would each create
their own nested map under the same key, Yjs would keep only one, and the other's
increments would be lost. The value is the sum of `p - n` over the counter's slots.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pycrdt import Map

from .changes import ChangeEvent
from .errors import FieldError, NotFoundError, shown
from .models import MAX_SAFE_INT, InvalidRecord, check_id
from .schema import COUNTERS, get_entry, observe_keys, set_fields

if TYPE_CHECKING:
    from .access import DocAccess

SLOT_SEPARATOR = "|"


def slot_value(raw: Any) -> int | None:
    """A slot amount: a non-negative integer, stored as a number or, past 2**53, a decimal string."""
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
    """What a slot amount holds: a number while exact in a double, a decimal string beyond."""
    return float(value) if value <= MAX_SAFE_INT else str(value)


def slot_key(name: str, client_id: int) -> str:
    """The root-map key of one writer's slot of a counter."""
    return f"{name}{SLOT_SEPARATOR}{client_id}"


def counter_name(key: str) -> str | None:
    """The counter a slot key belongs to, or None if a peer wrote a malformed key."""
    name, sep, owner = key.partition(SLOT_SEPARATOR)
    if not sep or not name or not owner.isdigit():
        return None
    return name


def slot_amounts(raw: Any) -> tuple[int, int] | None:
    """(increments, decrements) of a slot object, or None if it is not one."""
    if isinstance(raw, Map):
        raw = raw.to_py()
    if not isinstance(raw, dict):
        return None
    p = slot_value(raw.get("p", 0.0))
    n = slot_value(raw.get("n", 0.0))
    if p is None or n is None:
        return None
    return p, n


def _amount(by: Any) -> int:
    if isinstance(by, bool) or not isinstance(by, int) or by < 1:
        raise FieldError("counter", "by", f"must be a positive integer; got {shown(by)}")
    return by


class Counters:
    """Named PN-counters with exact integer values."""

    def __init__(self, access: DocAccess) -> None:
        self._access = access
        self._root = access.doc.get(COUNTERS, type=Map)
        self._by_name: dict[str, set[str]] | None = None
        access.keep_subscription(observe_keys(self._root, self._on_change))

    def _on_change(self, keys: Mapping[str, Mapping[str, Any]]) -> None:
        """Keep the name -> slot keys index current, key by key, after every transaction."""
        index = self._by_name
        if index is None:
            return
        for key, change in keys.items():
            name = counter_name(key)
            if name is None:
                continue
            keys = index.setdefault(name, set())
            if change["action"] == "delete":
                keys.discard(key)
                if not keys:
                    del index[name]
            else:
                keys.add(key)

    def _index(self) -> dict[str, set[str]]:
        """Counter name -> its slot keys (built on first use, then kept by `_on_change`)."""
        if self._by_name is None:
            index: dict[str, set[str]] = {}
            for key in self._root.keys():
                name = counter_name(key)
                if name is not None:
                    index.setdefault(name, set()).add(key)
            self._by_name = index
        return self._by_name

    def _total(self, name: str) -> tuple[int, list[str], bool]:
        """(value, problems, exists) of a counter; junk slots count as nothing and are reported."""
        keys = self._index().get(name, set()) | {slot_key(name, self._access.client_id)}
        total = 0
        bad: list[str] = []
        exists = False
        for key in sorted(keys):
            if key not in self._root:
                continue  # our own slot, not written yet
            exists = True
            raw = self._root[key]
            amounts = slot_amounts(raw)
            if amounts is None:
                bad.append(f"slot {key}: {raw!r} is not {{p, n}} with non-negative integers")
                continue
            total += amounts[0] - amounts[1]
        return total, bad, exists

    def _add(self, name: str, field: str, by: int, *, total: bool = True) -> int | None:
        check_id("counter", name, "name")
        amount = _amount(by)
        with self._access.write():
            key = slot_key(name, self._access.client_id)
            p, n = slot_amounts(get_entry(self._root, key)[1]) or (0, 0)
            if field == "p":
                p += amount
            else:
                n += amount
            set_fields(self._root, {key: {"p": store_value(p), "n": store_value(n)}})
            return self._total(name)[0] if total else None

    def incr(self, name: str, by: int = 1) -> int:
        """Add `by` (a positive integer) and return the new value."""
        value = self._add(name, "p", by)
        assert value is not None
        return value

    def bump(self, name: str, by: int = 1) -> None:
        """Add `by` without summing the counter's slots again, for a caller that knows the value already."""
        self._add(name, "p", by, total=False)

    def decr(self, name: str, by: int = 1) -> int:
        """Subtract `by` (a positive integer) and return the new value."""
        value = self._add(name, "n", by)
        assert value is not None
        return value

    def value(self, name: str) -> int:
        """The counter's exact value; 0 for a counter never touched. Junk slots are ignored."""
        with self._access.read():
            return self._total(name)[0]

    def get(self, name: str) -> int:
        """The counter's value; NotFoundError if no replica ever touched it."""
        with self._access.read():
            total, _, exists = self._total(name)
        if not exists:
            raise NotFoundError("counter", name)
        return total

    def all(self) -> dict[str, int]:
        """Every counter and its value."""
        with self._access.read():
            return {name: self._total(name)[0] for name in sorted(self._index())}

    def invalid(self) -> list[InvalidRecord]:
        """Counters holding slots a peer filled with junk, and root entries that are not slots at all."""
        bad = []
        with self._access.read():
            for name in sorted(self._index()):
                problems = self._total(name)[1]
                if problems:
                    bad.append(InvalidRecord(kind="counter", id=name, problems=problems))
            for key in self._root.keys():
                if counter_name(key) is None:
                    bad.append(InvalidRecord(kind="counter", id=key, problems=["key is not <name>|<client id>"]))
        return bad

    def translate(self, events: list[Any], origin: str, peer: str | None) -> list[ChangeEvent]:
        """One event per counter changed in a transaction, with its old and new value."""
        deltas: dict[str, int] = {}
        for event in events:
            if list(event.path):
                continue
            for key, change in event.keys.items():
                name = counter_name(key)
                if name is None:
                    continue
                old = slot_amounts(change.get("oldValue")) or (0, 0)
                new = slot_amounts(change.get("newValue")) or (0, 0)
                deltas[name] = deltas.get(name, 0) + (new[0] - new[1]) - (old[0] - old[1])
        out: list[ChangeEvent] = []
        for name, delta in deltas.items():
            value = self.value(name)
            out.append(ChangeEvent("counter", name, None, "update", value - delta, value, origin, peer))  # type: ignore[arg-type]
        return out
