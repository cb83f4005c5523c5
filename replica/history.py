"""WriteHistory: per-record write records, vector clocks and field conflicts, for any collection.

Yjs maps are last-writer-wins and the winner gets no event for the field it won, so
conflicts cannot be seen in change events. Instead every write also stores a write
record in `<name>_writes`, keyed `record|writer|seq` (concurrent records never overwrite
each other), carrying a per-record vector clock of the writes it had seen and the fields
it set with their values (record collections keep the full data after the write and name
the fields). A conflict is a pair of concurrent write records from different writers that
set one field to different values: a pure function of the shared state, identical on
every replica once synced. A resolution is a write whose clock dominates both sides and
that names the conflict; concurrent resolutions of the same conflict converge (the map's
last-writer-wins) and never conflict with each other.

Write records are compacted (see `compact`): a record every writer of the record has
since seen, and that is no side of an open conflict, is dropped; so is the oldest such
past `MAX_HISTORY` records, whoever saw it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pycrdt import Array, Map

from .errors import NotFoundError
from .models import iso_now, same_json
from .schema import append_plain, observe_touched, plain, set_fields

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


def _seq_text(seq: Any) -> str:
    """A sequence number as text (Yjs hands numbers back as floats: 29.0 -> "29")."""
    if isinstance(seq, float) and seq.is_integer():
        return str(int(seq))
    return str(seq)


MAX_HISTORY = 16
"""Write records kept per record at most, beyond those an open conflict needs."""
COMPACT_EVERY = 4
"""A writer compacts a record's history at every this many of its writes to it (amortised)."""


class WriteHistory:
    """The write records of one collection (root `<name>_writes`): history, clocks, conflicts, compaction.

    Layouts: `flat` (record collections, as first released) keys each write record
    `record|writer|seq`; `slots` (tasks, nodes, edges) keys one Y.Array per record and
    writer incarnation, `record|writer`, appended only by that writer, so no two replicas
    ever create the same key; compaction deletes array items (a unique key per write would
    leave a key tombstone of about 27 bytes for ever)."""

    def __init__(self, access: DocAccess, name: str, *, ignore_fields: Iterable[str] = (),
                 compact: bool = True, layout: str = "slots", id_scope: str = "") -> None:
        """`compact=False` keeps every write record (compat reads old versions from them); `id_scope`
        goes into conflict ids so that records of two collections with one id never share one."""
        self._access = access
        self.name = name
        self._id_scope = id_scope
        self.ignore_fields = frozenset(ignore_fields)
        self._compact = compact
        self._slots = layout == "slots"
        self._writes = access.doc.get(f"{name}_writes", type=Map)
        self._index: dict[str, set[str]] | None = None
        self._seq: int | None = None
        self._clocks: dict[str, Clock] = {}
        self._dirty: set[str] = set()
        self._since_compaction: dict[str, int] = {}
        self._slot_cache: dict[str, Array] = {}
        self._writer: str | None = None
        access.keep_subscription(observe_touched(self._writes, self._on_writes))

    @property
    def writer(self) -> str:
        """This incarnation's writer name: replica id and Yjs client id (unique per start and process;
        a replica's Doc, hence its client id, never changes, so the name is made once)."""
        if self._writer is None:
            self._writer = f"{self._access.replica_id}.{self._access.client_id}"
        return self._writer

    def _record_of(self, key: str) -> str:
        """The record id of a `<name>_writes` key: before the last `|` in slots (record ids may
        hold `|`, as edge keys do; writers never do), before the first in the flat layout."""
        return key.rsplit("|", 1)[0] if self._slots else key.split("|", 1)[0]

    def _writer_of(self, key: str) -> str:
        """The writer named by a `<name>_writes` key."""
        return key.rsplit("|", 1)[-1] if self._slots else (key.split("|") + [""])[1]

    def _on_writes(self, touched: set[str]) -> None:
        """Deep observer: note the touched keys (the Doc cannot be read from inside an observer).

        Only this writer appends to its own slots; another replica may delete items there
        (compaction), which never changes the clock, so a touch of our own slot keeps it."""
        mine = f"|{self.writer}"
        for key in touched:
            if not key.endswith(mine):
                self._clocks.pop(self._record_of(key), None)
        self._dirty.update(touched)

    def _keys(self) -> dict[str, set[str]]:
        if self._index is None:
            index: dict[str, set[str]] = {}
            for key in self._writes.keys():
                index.setdefault(self._record_of(key), set()).add(key)
            self._index = index
            self._dirty.clear()
        elif self._dirty:
            dirty, self._dirty = self._dirty, set()
            for key in dirty:
                found = self._index.setdefault(self._record_of(key), set())
                if key in self._writes:
                    found.add(key)
                else:
                    found.discard(key)
        return self._index

    def _raw(self, record_id: str) -> list[tuple[str, Any]]:
        """(key, plain body) of every write record of one record, both layouts (read scope held)."""
        out: list[tuple[str, Any]] = []
        for key in self._keys().get(record_id, ()):
            value = self._writes.get(key)
            if isinstance(value, Array):
                for item in value.to_py() or ():
                    if isinstance(item, dict):
                        out.append((f"{key}|{_seq_text(item.get('seq'))}", item))
            else:
                out.append((key, plain(value)))
        return out

    def _next_seq(self) -> int:
        if self._seq is None:
            mine = f"|{self.writer}"
            seqs = [0]
            for key in self._writes.keys():
                if key.endswith(mine) or f"{mine}|" in key:
                    value = self._writes.get(key)
                    items = value.to_py() if isinstance(value, Array) else [plain(value)]
                    seqs += [int(i["seq"]) for i in items or () if isinstance(i, dict) and isinstance(i.get("seq"), int)]
            self._seq = max(seqs)
        self._seq += 1
        return self._seq

    def contested(self) -> set[str]:
        """Ids of the records written by more than one writer: the only ones that can hold a conflict."""
        with self._access.read():
            return {rid for rid, keys in self._keys().items()
                    if len({self._writer_of(key) for key in keys if "|" in key}) > 1}

    def record_ids(self) -> list[str]:
        """Ids of the records that have write records."""
        with self._access.read():
            return sorted(rid for rid, keys in self._keys().items() if keys)

    def history(self, record_id: str) -> list[WriteRecord]:
        """Write records of one record in causal order (ties by writer, seq)."""
        with self._access.read():
            raw = self._raw(record_id)
        found = [w for w in (WriteRecord.parse(k, v) for k, v in raw) if w is not None]
        found.sort(key=lambda w: (sum(w.clock.values()), w.at, w.writer, w.seq))
        return found

    def clock(self, record_id: str) -> Clock:
        """What this replica has seen of the record's writes: the base for the next write."""
        with self._access.read():
            cached = self._clocks.get(record_id)
            if cached is None:
                cached = self._clocks[record_id] = join(w.clock for w in self.history(record_id))
            return dict(cached)

    def record(self, record_id: str, fields: dict[str, Any], data: dict[str, Any] | None, base: Clock | None,
               resolves: Iterable[str] = (), version: int | None = None, *, name_fields: bool = False,
               at: str | None = None) -> WriteRecord:
        """Store one write record (inside the write's transaction) and compact the record's history.

        `fields` maps each field set to its value; with `name_fields` only their names are
        stored and the values are read back from `data` (which then holds them all). `at` is
        the write's time when the caller already has it; no `resolves` key when it resolves
        nothing (readers default it to none)."""
        writer = self.writer
        resolved = tuple(resolves)
        seen = dict(base if base is not None else self.clock(record_id))
        seq = self._next_seq()
        seen[writer] = seq
        body: dict[str, Any] = {"record": record_id, "writer": writer, "seq": seq, "clock": seen,
                                "at": at or iso_now(), "fields": sorted(fields) if name_fields else dict(fields),
                                "data": data}
        if resolved:
            body["resolves"] = list(resolved)
        if version is not None:
            body["version"] = version
        if self._slots:
            slot_key = f"{record_id}|{writer}"
            slot = self._slot_cache.get(record_id)
            if slot is None:
                slot = self._writes.get(slot_key)
                if not isinstance(slot, Array):
                    slot = self._writes[slot_key] = Array()
                self._slot_cache[record_id] = slot
            append_plain(slot, body)
            key = f"{slot_key}|{seq}"
        else:
            key = f"{record_id}|{writer}|{seq}"
            set_fields(self._writes, {key: body})
        parsed = WriteRecord(key, record_id, writer, seq, seen, body["at"],
                             {name: (data or {}).get(name) for name in fields} if name_fields else dict(fields),
                             data, resolved, version)
        self._clocks[record_id] = join([self._clocks.get(record_id, {}), seen])
        if self._compact and self._slots:
            count = self._since_compaction.get(record_id, 0) + 1
            if count >= COMPACT_EVERY:
                self.compact(record_id)
                count = 0
            self._since_compaction[record_id] = count
        return parsed

    def compact(self, record_id: str) -> int:
        """Drop write records no future conflict can involve (inside a write); return how many.

        A record goes when every writer of the record has since written having seen it and
        it is no side of an open conflict; past MAX_HISTORY records, the oldest records some
        later write has seen go too (a replica that stayed offline longer than that may then
        have a concurrent write merged last-writer-wins without a recorded conflict). With one
        writer only, its latest record dominates all others: they go without parsing any."""
        slot_key = f"{record_id}|{self.writer}"
        if self._slots and self._keys().get(record_id) == {slot_key}:
            slot = self._writes.get(slot_key)
            if isinstance(slot, Array) and len(slot) > 1:
                dropped = len(slot) - 1
                del slot[:dropped]
                return dropped
            return 0
        history = self.history(record_id)
        if len(history) <= 1:
            return 0
        writers = {w.writer for w in history}
        latest = {writer: max((w for w in history if w.writer == writer), key=lambda w: w.seq) for writer in writers}
        candidates = [w for w in history
                      if all(latest[writer] is not w and latest[writer].dominates(w) for writer in writers)]
        if not candidates and len(history) <= MAX_HISTORY:
            return 0
        needed: set[str] = set()
        for conflict in self._open_conflicts(record_id, history):
            needed.update((conflict.left.key, conflict.right.key))
        drop = {w.key for w in candidates if w.key not in needed}
        kept = [w for w in history if w.key not in drop]
        excess = len(kept) - MAX_HISTORY
        if excess > 0:
            newest = history[-1]
            drop.update(w.key for w in [w for w in kept if w.key not in needed and w is not newest
                                        and newest.dominates(w)][:excess])
        if drop:
            self._delete(record_id, drop)
        return len(drop)

    def _delete(self, record_id: str, keys: set[str]) -> None:
        """Delete the write records named `keys` (slot items, or flat entries).

        Another writer's slot loses items, never its key: only a slot's writer may delete
        the key, since it may be appending to it at this very moment elsewhere."""
        for key in list(self._keys().get(record_id, ())):
            value = self._writes.get(key)
            if isinstance(value, Array):
                items = value.to_py() or []
                doomed = [i for i, item in enumerate(items)
                          if isinstance(item, dict) and f"{key}|{_seq_text(item.get('seq'))}" in keys]
                if len(doomed) == len(items) and key.endswith(f"|{self.writer}"):
                    del self._writes[key]
                    self._slot_cache.pop(record_id, None)
                    continue
                for index in reversed(doomed):
                    del value[index]
            elif key in keys:
                del self._writes[key]

    def _open_conflicts(self, record_id: str, history: list[WriteRecord]) -> list[FieldConflict]:
        found = []
        for i, left in enumerate(history):
            for right in history[i + 1 :]:
                conflict = self._pair(record_id, left, right)
                if conflict is not None and not self._settled(conflict, history):
                    found.append(conflict)
        return found

    def conflicts(self, record_id: str | None = None, *, include_settled: bool = False) -> list[FieldConflict]:
        """Unsettled conflicts (all records, or one), identical on every replica with the same state."""
        with self._access.read():
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
                                  if f not in self.ignore_fields and not same_json(a.fields[f], b.fields[f])))
        if not fields:
            return None
        left, right = sorted((a, b), key=lambda w: w.key)
        scoped = f"{self._id_scope}:{record_id}" if self._id_scope else record_id
        return FieldConflict(conflict_id(scoped, left.key, right.key), record_id, fields, left, right)

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

    def is_settled(self, conflict: FieldConflict) -> bool:
        """True once a later write settled `conflict` (named it, or rewrote all its fields)."""
        return self._settled(conflict, self.history(conflict.record_id))

    def find_conflict(self, conflict_id_: str) -> FieldConflict:
        """A conflict by id (settled or not)."""
        for conflict in self.conflicts(include_settled=True):
            if conflict.id == conflict_id_:
                return conflict
        raise NotFoundError("conflict", conflict_id_)
