"""Records: keyed JSON records with per-field merge, a replicated write history and conflicts.

Yjs maps are last-writer-wins and the winner gets no event for the field it won, so
conflicts cannot be seen in change events. Instead every write also stores a write
record, keyed by writer incarnation and sequence (concurrent records never overwrite
each other), carrying a per-record vector clock of the writes it had seen, the names of
the fields it set and the full data after it (which holds their values: a create does
not store its data twice). A conflict is a pair of concurrent write records from
different writers that set one field to different values: a pure function of the shared
state, identical on every replica once synced. A resolution is a write whose clock
dominates both sides and that names the conflict; concurrent resolutions of the same
conflict converge (the map's last-writer-wins) and never conflict with each other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pycrdt import Map

from .errors import FieldError, NotFoundError
from .history import Clock, FieldConflict, WriteHistory, WriteRecord, conflict_id, join
from .models import check_id, check_json, same_json
from .schema import get_entry, insert_map, map_at, map_entry, plain, set_fields

if TYPE_CHECKING:
    from .access import DocAccess

__all__ = ["Clock", "FieldConflict", "Records", "WriteRecord", "conflict_id", "join"]

class Records:
    """One named collection of records (root `<name>`) and its write records (root `<name>_writes`)."""

    def __init__(self, access: DocAccess, name: str, *, ignore_fields: Iterable[str] = ()) -> None:
        check_id("collection", name, "name")
        self._access = access
        self.name = name
        self.ignore_fields = frozenset(ignore_fields)
        self._root = access.doc.get(name, type=Map)
        self._history = WriteHistory(access, name, ignore_fields=ignore_fields, compact=False, layout="flat")

    @property
    def writer(self) -> str:
        """This incarnation's writer name: replica id and Yjs client id (unique per start)."""
        return self._history.writer

    def __contains__(self, record_id: object) -> bool:
        with self._access.read():
            return isinstance(record_id, str) and record_id in self._root

    def ids(self) -> list[str]:
        """Ids of the records that exist now."""
        with self._access.read():
            return sorted(self._root.keys())

    def get(self, record_id: str) -> dict[str, Any] | None:
        """The record's current fields (merged across replicas), or None."""
        with self._access.read():
            is_map, value = get_entry(self._root, record_id)
            if is_map:
                return value if isinstance(value, dict) else {"__invalid__": value}
            return None if value is None else {"__invalid__": plain(value)}

    def all(self) -> dict[str, dict[str, Any]]:
        """Every record, by id."""
        with self._access.read():
            return {k: plain(v) for k, v in self._root.items() if isinstance(v, Map)}

    def history(self, record_id: str) -> list[WriteRecord]:
        """Write records of one record in causal order (ties by writer, seq)."""
        return self._history.history(record_id)

    def clock(self, record_id: str) -> Clock:
        """What this replica has seen of the record's writes: the base for the next write."""
        return self._history.clock(record_id)

    def put(self, record_id: str, data: dict[str, Any], *, base: Clock | None = None,
            resolves: Iterable[str] = (), version: int | None = None,
            current: dict[str, Any] | None = None) -> WriteRecord:
        """Write the fields of `data` that differ from the current record, plus a write record.

        Only changed fields are written, so another replica's edits of other fields survive.
        `base` is the clock seen when the caller read the record (default: now). `current` is
        what `get` returned inside the caller's same write scope, to spare reading it again.
        """
        check_id(self.name, record_id)
        try:
            data = check_json(data, "data")
        except ValueError as exc:
            raise FieldError(self.name, "data", str(exc)) from None
        with self._access.write():
            if current is None or "__invalid__" in current:
                entry, current = map_entry(self._root, record_id)
            else:
                entry = map_at(self._root, record_id)
            if entry is None or current is None:
                current = {}
            changed = {k: v for k, v in data.items() if k not in current or not same_json(current[k], v)}
            removed = [k for k in current if k not in data]
            if not isinstance(entry, Map):
                insert_map(self._root, record_id, data)
            else:
                set_fields(entry, changed)
                for key in removed:
                    del entry[key]
            return self._record(record_id, changed, data, base, resolves, version)

    def delete(self, record_id: str, *, base: Clock | None = None, resolves: Iterable[str] = (),
               version: int | None = None) -> WriteRecord:
        """Delete a record, keeping its history (`resolves` and `version` as for `put`)."""
        with self._access.write():
            if record_id not in self._root:
                raise NotFoundError(self.name, record_id)
            del self._root[record_id]
            return self._record(record_id, {}, None, base, resolves, version)

    def _record(self, record_id: str, fields: dict[str, Any], data: dict[str, Any] | None,
                base: Clock | None, resolves: Iterable[str], version: int | None) -> WriteRecord:
        return self._history.record(record_id, fields, data, base, resolves, version, name_fields=True)

    def conflicts(self, record_id: str | None = None, *, include_settled: bool = False) -> list[FieldConflict]:
        """Unsettled conflicts (all records, or one), identical on every replica with the same state."""
        return self._history.conflicts(record_id, include_settled=include_settled)

    def is_settled(self, conflict: FieldConflict) -> bool:
        """True once a later write settled `conflict`."""
        return self._history.is_settled(conflict)

    def find_conflict(self, conflict_id_: str) -> FieldConflict:
        """A conflict by id (settled or not)."""
        return self._history.find_conflict(conflict_id_)

    def resolve(self, conflict: FieldConflict, values: dict[str, Any], *, version: int | None = None) -> WriteRecord:
        """Settle a conflict: write `values` over the current record with a clock dominating both sides."""
        with self._access.write():
            current = self.get(conflict.record_id)
            base = join([self.clock(conflict.record_id), conflict.left.clock, conflict.right.clock])
            if current is None:
                data = dict(values)
                if not data:
                    return self._record(conflict.record_id, {}, None, base, (conflict.id,), version)
            else:
                data = {**current, **values}
            record = self.put(conflict.record_id, data, base=base, resolves=(conflict.id,), version=version)
            return record
