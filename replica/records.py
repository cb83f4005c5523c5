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

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pycrdt import Map

from .errors import FieldError, NotFoundError
from .models import check_id, check_json, iso_now
from .schema import observe_keys, plain

if TYPE_CHECKING:
    from .access import DocAccess

Clock = dict[str, int]
IGNORED_BY_DEFAULT = frozenset()


@dataclass(frozen=True)
class WriteRecord:
    """One write to one record: who, which sequence, what it had seen, what it set."""

    key: str
    record_id: str
    writer: str
    seq: int
    clock: Clock
    at: str
    fields: dict[str, Any]
    data: dict[str, Any] | None
    resolves: tuple[str, ...] = ()
    version: int | None = None

    @property
    def deleted(self) -> bool:
        """True if this write deleted the record."""
        return self.data is None

    def dominates(self, other: WriteRecord) -> bool:
        """True if this write had seen `other` (other is in its causal past)."""
        return self.clock.get(other.writer, 0) >= other.seq

    @classmethod
    def parse(cls, key: str, raw: Any) -> WriteRecord | None:
        """Read a stored write record; None for anything malformed (a peer's junk)."""
        if not isinstance(raw, dict):
            return None
        try:
            clock = {str(k): int(v) for k, v in dict(raw["clock"]).items()}
            data = raw.get("data")
            fields = raw.get("fields", {})
            if data is not None and not isinstance(data, dict):
                return None
            if isinstance(fields, list):
                if not all(isinstance(name, str) for name in fields):
                    return None
                fields = {name: data[name] for name in fields if name in data} if data is not None else {}
            elif not isinstance(fields, dict):
                return None
            version = raw.get("version")
            return cls(
                key=key,
                record_id=str(raw["record"]),
                writer=str(raw["writer"]),
                seq=int(raw["seq"]),
                clock=clock,
                at=str(raw.get("at", "")),
                fields=fields,
                data=data,
                resolves=tuple(str(c) for c in raw.get("resolves", ())),
                version=int(version) if version is not None else None,
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class FieldConflict:
    """Two concurrent writes that set the same fields to different values."""

    id: str
    record_id: str
    fields: tuple[str, ...]
    left: WriteRecord
    right: WriteRecord

    def values(self) -> dict[str, tuple[Any, Any]]:
        """Field -> (left value, right value): both sides are kept."""
        return {f: (self.left.fields.get(f), self.right.fields.get(f)) for f in self.fields}


def conflict_id(record_id: str, a: str, b: str) -> str:
    """Deterministic id of the conflict between write records `a` and `b`."""
    first, second = sorted((a, b))
    digest = hashlib.sha256(f"{record_id}\x00{first}\x00{second}".encode()).hexdigest()[:16]
    return f"C-{digest}"


def join(clocks: Iterable[Clock]) -> Clock:
    """Pointwise maximum of vector clocks."""
    out: Clock = {}
    for clock in clocks:
        for writer, seq in clock.items():
            if seq > out.get(writer, 0):
                out[writer] = seq
    return out


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


class Records:
    """One named collection of records (root `<name>`) and its write records (root `<name>_writes`)."""

    def __init__(self, access: DocAccess, name: str, *, ignore_fields: Iterable[str] = ()) -> None:
        check_id("collection", name, "name")
        self._access = access
        self.name = name
        self.ignore_fields = frozenset(ignore_fields)
        self._root = access.doc.get(name, type=Map)
        self._writes = access.doc.get(f"{name}_writes", type=Map)
        self._index: dict[str, set[str]] | None = None
        self._seq: int | None = None
        access.keep_subscription(observe_keys(self._writes, self._on_writes))

    @property
    def writer(self) -> str:
        """This incarnation's writer name: replica id and Yjs client id (unique per start)."""
        return f"{self._access.replica_id}.{self._access.client_id}"

    def _on_writes(self, keys: Mapping[str, Mapping[str, Any]]) -> None:
        if self._index is None:
            return
        for key, change in keys.items():
            record_id = key.rsplit("|", 2)[0]
            keys = self._index.setdefault(record_id, set())
            if change["action"] == "delete":
                keys.discard(key)
            else:
                keys.add(key)

    def _keys(self) -> dict[str, set[str]]:
        if self._index is None:
            index: dict[str, set[str]] = {}
            for key in self._writes.keys():
                index.setdefault(key.rsplit("|", 2)[0], set()).add(key)
            self._index = index
        return self._index

    def _next_seq(self) -> int:
        if self._seq is None:
            prefix = f"|{self.writer}|"
            self._seq = max((int(k.rsplit("|", 1)[1]) for k in self._writes.keys()
                             if prefix in k and k.rsplit("|", 1)[1].isdigit()), default=0)
        self._seq += 1
        return self._seq

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
            entry = self._root.get(record_id)
            if entry is None:
                return None
            return plain(entry) if isinstance(entry, Map) else {"__invalid__": plain(entry)}

    def all(self) -> dict[str, dict[str, Any]]:
        """Every record, by id."""
        with self._access.read():
            return {k: plain(v) for k, v in self._root.items() if isinstance(v, Map)}

    def history(self, record_id: str) -> list[WriteRecord]:
        """Write records of one record in causal order (ties by writer, seq)."""
        with self._access.read():
            raw = [(key, plain(self._writes.get(key))) for key in self._keys().get(record_id, ())]
        found = [w for w in (WriteRecord.parse(k, v) for k, v in raw) if w is not None]
        found.sort(key=lambda w: (sum(w.clock.values()), w.at, w.writer, w.seq))
        return found

    def clock(self, record_id: str) -> Clock:
        """What this replica has seen of the record's writes: the base for the next write."""
        return join(w.clock for w in self.history(record_id))

    def put(self, record_id: str, data: dict[str, Any], *, base: Clock | None = None,
            resolves: Iterable[str] = (), version: int | None = None) -> WriteRecord:
        """Write the fields of `data` that differ from the current record, plus a write record.

        Only changed fields are written, so another replica's edits of other fields survive.
        `base` is the clock seen when the caller read the record (default: now).
        """
        check_id(self.name, record_id)
        try:
            data = check_json(data, "data")
        except ValueError as exc:
            raise FieldError(self.name, "data", str(exc)) from None
        with self._access.write():
            entry = self._root.get(record_id)
            current = plain(entry) if isinstance(entry, Map) else {}
            changed = {k: v for k, v in data.items() if k not in current or not _same(current[k], v)}
            removed = [k for k in current if k not in data]
            if not isinstance(entry, Map):
                self._root[record_id] = Map(data)
            else:
                for key, value in changed.items():
                    entry[key] = value
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
        seen = dict(base if base is not None else self.clock(record_id))
        seq = self._next_seq()
        seen[self.writer] = seq
        key = f"{record_id}|{self.writer}|{seq}"
        body: dict[str, Any] = {"record": record_id, "writer": self.writer, "seq": seq, "clock": seen,
                                "at": iso_now(), "fields": sorted(fields), "data": data, "resolves": list(resolves)}
        if version is not None:
            body["version"] = version
        self._writes[key] = body
        parsed = WriteRecord.parse(key, body)
        assert parsed is not None
        return parsed

    def conflicts(self, record_id: str | None = None, *, include_settled: bool = False) -> list[FieldConflict]:
        """Unsettled conflicts (all records, or one), identical on every replica with the same state."""
        ids = [record_id] if record_id is not None else sorted(self._keys())
        found: list[FieldConflict] = []
        for rid in ids:
            history = self.history(rid)
            for i, left in enumerate(history):
                for right in history[i + 1 :]:
                    conflict = self._pair(rid, left, right)
                    if conflict is None:
                        continue
                    if include_settled or not self._settled(conflict, history):
                        found.append(conflict)
        found.sort(key=lambda c: (c.record_id, c.id))
        return found

    def _pair(self, record_id: str, a: WriteRecord, b: WriteRecord) -> FieldConflict | None:
        if a.writer == b.writer or a.dominates(b) or b.dominates(a):
            return None
        if set(a.resolves) & set(b.resolves):
            return None
        if a.deleted != b.deleted:
            fields = tuple(sorted((set(a.fields) | set(b.fields) | {"__deleted__"}) - self.ignore_fields))
        else:
            fields = tuple(sorted(f for f in set(a.fields) & set(b.fields)
                                  if f not in self.ignore_fields and not _same(a.fields[f], b.fields[f])))
        if not fields:
            return None
        left, right = sorted((a, b), key=lambda w: w.key)
        return FieldConflict(conflict_id(record_id, left.key, right.key), record_id, fields, left, right)

    @staticmethod
    def _settled(conflict: FieldConflict, history: list[WriteRecord]) -> bool:
        """Settled by a later write that saw both sides and names it, or rewrote every field of it."""
        for write in history:
            if write.dominates(conflict.left) and write.dominates(conflict.right):
                if conflict.id in write.resolves:
                    return True
                if "__deleted__" not in conflict.fields and set(conflict.fields) <= set(write.fields):
                    return True
        return False

    def find_conflict(self, conflict_id_: str) -> FieldConflict:
        """A conflict by id (settled or not)."""
        for conflict in self.conflicts(include_settled=True):
            if conflict.id == conflict_id_:
                return conflict
        raise NotFoundError("conflict", conflict_id_)

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
