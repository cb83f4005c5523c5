"""Replica: one agent's local copy of the shared state, over one pycrdt Doc and its UpdateLog.

Writes are local and instant; every Doc update, local or remote, becomes one log record
before it counts as durable. The transport reaches the Doc only through the sync surface
(`state_vector`, `diff`, `apply_update`, `on_update`).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pycrdt import Array, Doc, Map

from .access import DocAccess
from .changes import ChangeCallback, ChangeEvent, ChangeFeed
from .claims import CLAIMS, Claims
from .counters import Counters
from .datadir import DataDir
from .durability import Durability
from .errors import ClosedError, InvalidUpdateError, ReplicaError, StorageError
from .graph import Graph
from .lessons import Lessons
from .models import InvalidRecord
from .schema import COUNTERS, EDGES, LESSONS, META, NODES, REMOVED_NODES, SCHEMA_VERSION, TASKS
from .records import Records
from .requests import REQUESTS, Requests
from .snapshot import SnapshotProblem, SnapshotStore
from .statevector import decode_state_vector
from .tasks import TaskBoard
from .update_log import (
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_SEGMENT_SIZE,
    CompactionLock,
    ReplayReport,
    SegmentGoneError,
    UpdateLog,
)

if TYPE_CHECKING:
    from .repair import ScanResult

log = logging.getLogger(__name__)

EMPTY_UPDATE = b"\x00\x00"
LOCAL = "local"
PROCESS = "process"
"""Origin of updates another local process appended to the shared log."""


@dataclass(frozen=True)
class Root:
    """One root type of the Doc: its name, its type, the collection that owns it, and its change translator."""

    name: str
    kind: type
    collection: str
    translate: str | None
    stat: str | None


ROOTS: tuple[Root, ...] = (
    Root(TASKS, Map, "tasks", "translate", "tasks"),
    Root(NODES, Map, "graph", "translate_nodes", "nodes"),
    Root(EDGES, Map, "graph", "translate_edges", "edges"),
    Root(REMOVED_NODES, Map, "graph", None, None),
    Root(COUNTERS, Map, "counters", "translate", "counters"),
    Root(LESSONS, Array, "lessons", "translate", "lessons"),
    Root(REQUESTS, Map, "requests", None, None),
    Root(CLAIMS, Map, "claims", "translate", None),
)
"""The one table of built-in collections: creation, change events, validation and stats all read it."""
RESERVED_ROOTS = frozenset({root.name for root in ROOTS} | {META})
FOLLOW_INTERVAL = 0.005
"""How often `follow()` compares the log head with what this process has applied (seconds)."""
DEFAULT_AUTO_COMPACT_BYTES = 32 * 1024 * 1024
COMPACT_ON_CLOSE_RECORDS = 1000
"""A clean close snapshots the state when the log holds this many records since the last
snapshot: replay pays per record, so the next open applies one update instead."""
LARGE_UPDATE_BYTES = 64 * 1024
"""From this size on, a peer's update is applied without the doc observer (see `_apply_large`)."""
UpdateListener = Callable[[bytes, str | None], None]


@dataclass
class OpenReport:
    """What opening found on disk: snapshot used, records replayed, anything dropped."""

    snapshot_lsn: int = 0
    snapshot_problems: list[SnapshotProblem] = field(default_factory=list)
    replay: ReplayReport = field(default_factory=ReplayReport)
    swept_edges: int = 0

    @property
    def warnings(self) -> list[str]:
        """Human-readable lines for everything recovery had to drop or skip."""
        lines = [f"skipped snapshot {p.path.name}: {p.reason}" for p in self.snapshot_problems]
        torn = self.replay.torn_tail
        if torn is not None:
            lines.append(
                f"dropped a torn tail of {torn.dropped_bytes} bytes at offset {torn.offset} "
                f"of {torn.path.name} ({torn.reason})"
            )
        return lines


@dataclass(frozen=True)
class CompactionReport:
    """What compaction did: the snapshot written and the segments it could delete."""

    snapshot: Path
    lsn: int
    removed_segments: list[Path]


def _fresh_client_id(taken: set[int]) -> int:
    while True:
        candidate = secrets.randbelow(2**32 - 2) + 1
        if candidate not in taken:
            return candidate


class Replica:
    """Typed, durable, syncable state: tasks, graph, counters and lessons over one Doc."""

    def __init__(
        self,
        doc: Doc,
        replica_id: str,
        *,
        datadir: DataDir | None = None,
        update_log: UpdateLog | None = None,
        snapshots: SnapshotStore | None = None,
        report: OpenReport | None = None,
        auto_compact_bytes: int = DEFAULT_AUTO_COMPACT_BYTES,
    ) -> None:
        self.doc = doc
        self.replica_id = replica_id
        self.datadir = datadir
        self.open_report = report or OpenReport()
        self.auto_compact_bytes = auto_compact_bytes
        self._log = update_log
        self._snapshots = snapshots
        self._lock = threading.RLock()
        self._depth = 0
        self._snapshot = 0
        self._origin: str | None = None
        self._incoming: bytes | None = None
        self._last_lsn = 0
        self._changed = False
        self._callback_error: BaseException | None = None
        self._closed = False
        self._update_listeners: list[UpdateListener] = []
        self._pending_updates: list[tuple[bytes, str | None]] = []
        self._pending_raw: list[tuple[str, list[Any]]] = []
        self._feed = ChangeFeed()
        self._deep_subs: list[Any] = []
        self._compacting = threading.Lock()
        self._collections: dict[str, Records] = {}
        self._subscriptions: list[Any] = []
        self._from_log = False
        self._compaction_started = False
        self._follower: threading.Thread | None = None
        self._stop_following = threading.Event()
        self.meta = doc.get(META, type=Map)
        for root in ROOTS:
            doc.get(root.name, type=root.kind)
        self.access = DocAccess(self)
        self.tasks = TaskBoard(self.access)
        self.graph = Graph(self.access)
        self.counters = Counters(self.access)
        self.lessons = Lessons(self.access)
        self.requests = Requests(self.access)
        self.claims = Claims(self.access, self.tasks)
        self._doc_sub = doc.observe(self._on_transaction)

    @classmethod
    def memory(cls, replica_id: str | None = None) -> Replica:
        """An in-memory replica (tests, ephemeral peers): same API, nothing on disk."""
        from .datadir import new_replica_id

        replica = cls(Doc(client_id=_fresh_client_id(set())), replica_id or new_replica_id())
        replica._init_meta()
        return replica

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        replica_id: str | None = None,
        durability: Durability | str = Durability.BALANCED,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        auto_compact_bytes: int = DEFAULT_AUTO_COMPACT_BYTES,
    ) -> Replica:
        """Open (creating if needed) the replica in `path`, recovering from its snapshot and log.

        Takes the directory's lock for the life of the replica. A torn log tail is dropped
        and reported in `open_report`; mid-log corruption raises LogCorruptionError.
        """
        mode = Durability.parse(durability)
        datadir = DataDir(path)
        datadir.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        identity = datadir.load_or_create_identity(replica_id)
        snapshots = SnapshotStore(datadir.snapshot_dir, sync=True)
        update_log = UpdateLog(datadir.log_dir, mode, flush_interval=flush_interval, segment_size=segment_size)
        loaded: list[tuple[Any, list[SnapshotProblem]]] = []

        def load_snapshot() -> int:
            snap, problems = snapshots.load_latest()
            loaded.append((snap, problems))
            return snap.lsn if snap else 0

        try:
            records, replay, _ = update_log.open(load_snapshot, datadir)
            snap, problems = loaded[-1]
            payloads = [r.payload for r in records]
            taken: set[int] = set()
            while True:
                doc = Doc(client_id=_fresh_client_id(taken))
                try:
                    with doc.transaction():
                        if snap is not None:
                            doc.apply_update(snap.state)
                        for payload in payloads:
                            doc.apply_update(payload)
                except ValueError as exc:
                    raise StorageError(f"{datadir.path}: a stored update is not valid Yjs data: {exc}") from exc
                taken = set(decode_state_vector(doc.get_state()))
                if doc.client_id not in taken:
                    break
        except BaseException:
            update_log.close()
            datadir.unlock()
            raise
        report = OpenReport(snapshot_lsn=snap.lsn if snap else 0, snapshot_problems=problems, replay=replay)
        replica = cls(doc, identity.replica_id, datadir=datadir, update_log=update_log,
                      snapshots=snapshots, report=report, auto_compact_bytes=auto_compact_bytes)
        replica._last_lsn = update_log.last_lsn
        replica._init_meta()
        report.swept_edges = replica.graph.sweep(full=True)
        for line in report.warnings:
            log.warning("%s: %s", datadir.path, line)
        return replica

    def _init_meta(self) -> None:
        if "schema_version" not in self.meta:
            with self._write():
                self.meta["schema_version"] = SCHEMA_VERSION

    # -- the write path ---------------------------------------------------------------

    def _on_transaction(self, event: Any) -> None:
        """Doc observer: log the transaction's update, queue it for listeners.

        A remote transaction logs and relays the update as received: replaying it gives
        the same state, and not asking yrs to encode the transaction's own update saves
        a quarter of the cost of applying a large catch-up.
        """
        try:
            update = self._incoming
            if update is None:
                update = event.update
                if update == EMPTY_UPDATE:
                    return
            self._changed = True
            if self._log is not None and not self._from_log:
                self._last_lsn = self._log.append_nowait(update)
            if self._update_listeners:
                self._pending_updates.append((update, self._origin))
        except BaseException as exc:
            self._callback_error = exc

    def _write(self, origin: str | None = None) -> _WriteScope:
        """A scope whose writes are (part of) one Doc transaction; the outermost logs and notifies."""
        return _WriteScope(self, origin)

    def _finish_transaction(self) -> None:
        """After the outermost transaction: surface log errors, then notify listeners in order."""
        origin = self._origin
        self._origin = None
        if self._callback_error is not None:
            error, self._callback_error = self._callback_error, None
            self._closed = True
            raise StorageError(f"the update could not be logged; the replica stopped accepting writes: {error}") from error
        if self._pending_updates:
            updates, self._pending_updates = self._pending_updates, []
            for listener in self._update_listeners:
                for update, update_origin in updates:
                    try:
                        listener(update, update_origin)
                    except Exception:
                        log.exception("update listener failed")
        if self._pending_raw:
            raw, self._pending_raw = self._pending_raw, []
            if self._feed.active:
                self._publish(raw, origin)
        if self._log is not None and self._log.bytes_since_snapshot > self.auto_compact_bytes:
            self._compact_in_background()

    def _sync_after(self, lsn: int, *, transaction: bool) -> None:
        """Make a finished outermost write durable as its mode promises (outside the lock)."""
        log_ = self._log
        if log_ is None or log_.durability is Durability.LAZY:
            return
        if transaction or log_.durability is Durability.PARANOID:
            log_.sync(lsn)

    def _read_scope(self) -> _ReadScope:
        """A locked view that first applies what other processes appended (see DocAccess.read)."""
        return _ReadScope(self)

    def _snapshot_scope(self) -> _SnapshotScope:
        """A read scope holding one Doc transaction for every read inside it (see DocAccess.snapshot)."""
        return _SnapshotScope(self)

    def _catch_up(self) -> None:
        """Apply the records other local processes appended since this one last looked.

        Called with the replica lock and the log's append lock held, outside any transaction.
        Each record is applied as received, not logged again, and reported to listeners with
        origin PROCESS; a segment compacted away meanwhile means reloading from the snapshot."""
        log_ = self._log
        assert log_ is not None
        before = log_.read_position
        try:
            records = log_.read_new()
        except SegmentGoneError:
            self._reload_from_snapshot()
            before = log_.read_position
            records = log_.read_new()
        applied = before
        try:
            for record in records:
                self._apply_logged(record.payload)
                applied = record.lsn
        except BaseException:
            log_.seek_after(applied)
            raise
        self._last_lsn = max(self._last_lsn, log_.last_lsn)

    def _reload_from_snapshot(self) -> None:
        assert self._snapshots is not None and self._log is not None
        snap, _ = self._snapshots.load_latest()
        if snap is None:
            raise StorageError(f"{self._log.directory}: a segment is gone and no snapshot covers it")
        self._apply_logged(snap.state)
        self._log.seek_after(snap.lsn)

    def _apply_logged(self, payload: bytes) -> None:
        """Apply an update already in the log (another process's record, or a snapshot) without logging it."""
        saved_changed, saved_incoming = self._changed, self._incoming
        self._origin = PROCESS
        self._incoming = payload
        self._from_log = True
        self._changed = False
        self._depth += 1
        try:
            with self.doc.transaction():
                self.doc.apply_update(payload)
        except ValueError as exc:
            raise StorageError(f"a record in the shared log is not valid Yjs data: {exc}") from exc
        finally:
            self._depth -= 1
            self._from_log = False
            self._incoming = saved_incoming
        changed, self._changed = self._changed, saved_changed
        self._finish_transaction()
        if changed:
            self.graph.sweep()

    def refresh(self) -> bool:
        """Apply what other local processes appended, now; True if something was applied meanwhile.

        Inside this thread's own read snapshot or write (or once closed) nothing is applied (the
        snapshot shows one state, a write decided on what it read), so it returns False; the next
        scope applies it."""
        log_ = self._log
        if log_ is None or not log_.changed():
            return False
        before = log_.read_position
        with self._read_scope():
            return log_.read_position != before

    def follow(self, interval: float = FOLLOW_INTERVAL) -> None:
        """Apply other processes' records within `interval` of their append, from a thread (idempotent).

        Listeners (a mesh relaying to peers, a change feed) then hear about local processes'
        writes without waiting for this process's next read or write."""
        if self._log is None or self._follower is not None:
            return

        def run() -> None:
            while not self._stop_following.wait(interval):
                try:
                    self.refresh()
                except ClosedError:
                    return
                except Exception:
                    log.exception("following the shared log failed")

        self._follower = threading.Thread(target=run, name="agentstate-log-follower", daemon=True)
        self._follower.start()

    @contextmanager
    def transaction(self, *, wait: bool = True) -> Iterator[Replica]:
        """Group writes into one update, one log record and (unless LAZY) one fsync.

        The block is one Doc transaction: atomic on recovery, and durable when it returns
        in PARANOID and BALANCED modes (concurrent transactions share one fsync). Each
        write is validated before it touches the Doc; a Doc transaction cannot be rolled
        back, so writes made before an exception in the block stay applied. With
        `wait=False` a BALANCED transaction returns before the fsync: call
        `wait_durable(replica.last_lsn)` later, for instance after releasing a lock, so that
        other committers share it (PARANOID still fsyncs before returning, as every write).
        """
        scope = _WriteScope(self, None, transaction=wait)
        with scope:
            yield self

    def wait_durable(self, lsn: int | None = None) -> None:
        """Block until records up to `lsn` are fsynced, unless the mode is LAZY (no-op in memory)."""
        if self._log is not None and self._log.durability is not Durability.LAZY:
            self._log.sync(lsn)

    def flush(self) -> None:
        """Block until everything written so far is on disk (any mode)."""
        if self._log is not None:
            self._log.sync()

    # -- sync surface (the transport's only way in) ----------------------------------------

    def state_vector(self) -> bytes:
        """The Doc's state vector, for a peer to compute what we lack."""
        with self._read_scope():
            return self.doc.get_state()

    def diff(self, state_vector: bytes | None = None) -> bytes:
        """Everything we hold that a peer with `state_vector` lacks (all of it for None)."""
        with self._read_scope():
            try:
                return self.doc.get_update(state_vector)
            except ValueError as exc:
                raise InvalidUpdateError(f"not a valid state vector: {exc}") from exc

    def apply_update(self, update: bytes, origin: str = "remote") -> bool:
        """Apply a peer's update; True if it changed anything. Invalid bytes change nothing."""
        if not isinstance(update, (bytes, bytearray)):
            raise InvalidUpdateError("an update must be bytes")
        with self._lock:
            head = self._log.lock() if self._log is not None and self._depth == 0 and not self._closed else None
            if head is not None:
                head.acquire()
            try:
                if head is not None:
                    self._catch_up()
                return self._apply_remote(bytes(update), origin)
            finally:
                if head is not None:
                    head.release()

    def _apply_remote(self, update: bytes, origin: str) -> bool:
        """apply_update's body, with the replica lock (and the append lock, caught up) held."""
        self._changed = False
        self._incoming = update
        try:
            if len(update) >= LARGE_UPDATE_BYTES and self._depth == 0:
                self._apply_large(origin)
            else:
                with self._write(origin=origin):
                    self.doc.apply_update(self._incoming)
        except ValueError as exc:
            raise InvalidUpdateError(f"not a valid Yjs update: {exc}") from exc
        except BaseException as exc:
            if type(exc).__name__ != "PanicException":
                raise
            raise InvalidUpdateError(f"pycrdt could not integrate the update: {exc}") from None
        finally:
            self._incoming = None
        changed = self._changed
        if changed:
            self.graph.sweep()
        return changed

    def _apply_large(self, origin: str) -> None:
        """Apply the large `_incoming` update with the doc observer detached.

        pycrdt's doc observer encodes every transaction's own update in Rust before it calls
        back (a tenth of the cost of applying a catch-up, and a second copy of it in memory),
        and a remote update is logged as received anyway. Without it, "changed" is decided as pycrdt decides when to call the
        observer: the state vector moved, or the delete set grew (compared encoded, which is
        canonical). Then the update is logged and queued exactly as `_on_transaction` does.
        """
        assert self._incoming is not None
        state_before = self.doc.get_state()
        deletes_before = self.doc.get_update(state_before)
        self.doc.unobserve(self._doc_sub)
        try:
            with self._write(origin=origin):
                self.doc.apply_update(self._incoming)
                state_after = self.doc.get_state()
                if state_after != state_before or self.doc.get_update(state_after) != deletes_before:
                    self._on_transaction(None)
        finally:
            self._doc_sub = self.doc.observe(self._on_transaction)

    def on_update(self, listener: UpdateListener) -> Callable[[], None]:
        """Call `listener(update, origin)` after every change (origin None = local); returns unsubscribe."""
        self._update_listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._update_listeners:
                self._update_listeners.remove(listener)

        return unsubscribe

    @property
    def client_id(self) -> int:
        """This incarnation's Yjs client id (fresh at every open)."""
        return self.doc.client_id

    # -- change feed ---------------------------------------------------------------------

    def _ensure_deep_observers(self) -> None:
        if self._deep_subs:
            return
        for spec in ROOTS:
            if spec.translate is not None:
                root = self.doc.get(spec.name, type=spec.kind)
                self._deep_subs.append((root, root.observe_deep(self._collector(spec.name))))

    def _collector(self, name: str) -> Callable[[list[Any]], None]:
        def collect(events: list[Any]) -> None:
            self._pending_raw.append((name, list(events)))

        return collect

    def _publish(self, raw: list[tuple[str, list[Any]]], origin: str | None) -> None:
        where = LOCAL if origin is None else PROCESS if origin == PROCESS else "remote"
        peer = origin if where == "remote" else None
        translators = {spec.name: getattr(getattr(self, spec.collection), spec.translate)
                       for spec in ROOTS if spec.translate is not None}
        events: list[ChangeEvent] = []
        for name, batch in raw:
            try:
                events.extend(translators[name](batch, where, peer))
            except Exception:
                log.exception("could not translate a change on %s", name)
        if events:
            self._feed.publish(events)

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call `callback(ChangeEvent)` after each transaction for every change in it.

        Other local processes' writes arrive too (origin "process"): subscribing starts `follow()`."""
        with self._lock:
            self._ensure_deep_observers()
        self.follow()
        return self._feed.subscribe(callback)

    async def changes(self, maxsize: int = 10_000) -> AsyncIterator[ChangeEvent]:
        """Async iterator over change events from now on (other processes' writes too, via `follow()`)."""
        with self._lock:
            self._ensure_deep_observers()
        self.follow()
        async for event in self._feed.iterate(maxsize):
            yield event

    def keep_subscription(self, subscription: Any) -> Any:
        """Hold a yrs subscription until the replica closes, then drop it (so the replica can be freed)."""
        self._subscriptions.append(subscription)
        return subscription

    def collection(self, name: str, *, ignore_fields: tuple[str, ...] = ()) -> Records:
        """A named collection of keyed JSON records with write history and conflicts (one per name)."""
        with self._lock:
            found = self._collections.get(name)
            if found is None:
                if name in RESERVED_ROOTS:
                    raise ReplicaError(f"{name!r} is a reserved root name")
                found = self._collections[name] = Records(self.access, name, ignore_fields=ignore_fields)
            return found

    # -- maintenance -------------------------------------------------------------------

    def invalid_records(self) -> list[InvalidRecord]:
        """Every stored record that fails validation (usually junk a peer sent)."""
        owners = dict.fromkeys(spec.collection for spec in ROOTS if spec.translate is not None and spec.stat)
        return [bad for name in owners for bad in getattr(self, name).invalid()]

    def compact(self, *, wait: bool = True) -> CompactionReport | None:
        """Snapshot the full state and delete the log segments two snapshots make redundant.

        One process compacts a directory at a time (`log/COMPACT` flock): with `wait=False`
        this returns None when another is compacting. The state snapshotted includes every
        record any process appended before it (caught up under the append lock)."""
        if self._log is None or self._snapshots is None:
            raise ReplicaError("an in-memory replica has nothing to compact")
        with self._compacting:
            guard = CompactionLock.take(self._log.directory, wait=wait)
            if guard is None:
                return None
            with guard:
                with self._write():
                    state = self.doc.get_update()
                    lsn = self._log.last_lsn
                    self._log.roll()
                    self._log.bytes_since_snapshot = 0
                    self._log.records_since_snapshot = 0
                path = self._snapshots.write(lsn, state, self.replica_id)
                with self._log.lock():
                    older = self._snapshots.prune()
                removed = self._log.delete_segments_through(older) if older is not None else []
                return CompactionReport(path, lsn, removed)

    def scan_storage(self) -> ScanResult:
        """Read every byte of the snapshots and the log as published now, for `verify`.

        Holds the compaction lock (so no segment is deleted meanwhile) but neither the
        replica's lock nor the append lock during the scan: peers' updates and other
        processes' writes go on, and the scan stops where the log ended when it began."""
        from .repair import scan  # verify's reader: loaded by the commands that scan

        if self._log is None or self.datadir is None:
            raise ReplicaError("an in-memory replica has no storage to scan")
        guard = CompactionLock.take(self._log.directory, wait=True)
        assert guard is not None
        with guard:
            head = self._log.lock()
            with head:
                end = (head.segment, head.end)
            return scan(self.datadir, end)

    def _compact_in_background(self) -> None:
        if self._compacting.locked() or self._compaction_started:
            return
        self._compaction_started = True

        def run() -> None:
            try:
                self.compact(wait=False)
            except ClosedError:
                pass
            except Exception:
                log.exception("background compaction failed")
            finally:
                self._compaction_started = False

        threading.Thread(target=run, name="agentstate-compact", daemon=True).start()

    @property
    def durability(self) -> Durability | None:
        """The log's durability mode (None for an in-memory replica)."""
        return self._log.durability if self._log is not None else None

    @property
    def last_lsn(self) -> int:
        """Sequence number of the newest log record."""
        return self._last_lsn

    @property
    def durable_lsn(self) -> int:
        """Every record up to this sequence number is on disk."""
        return self._log.durable_lsn if self._log is not None else 0

    def stats(self) -> dict[str, Any]:
        """Counts and log positions for `agentstate status`."""
        with self._read_scope():
            counts = {spec.stat: len(self.doc.get(spec.name, type=spec.kind)) for spec in ROOTS if spec.stat}
            return {
                "replica_id": self.replica_id,
                "client_id": self.client_id,
                "path": str(self.datadir.path) if self.datadir else None,
                "durability": self.durability.value if self.durability else None,
                **counts,
                "last_lsn": self._last_lsn,
                "durable_lsn": self.durable_lsn,
                "state_vector_clients": len(decode_state_vector(self.doc.get_state())),
            }

    def close(self) -> None:
        """Snapshot if the log grew long, flush the log, release the directory and end change iterators."""
        with self._lock:
            if self._closed and self._log is None:
                return
            snapshot = (not self._closed and self._log is not None and self._snapshots is not None
                        and self._log.records_since_snapshot >= COMPACT_ON_CLOSE_RECORDS)
        if snapshot:
            try:
                self.compact()
            except (ReplicaError, OSError) as exc:
                log.warning("no snapshot at close (the log keeps everything): %s", exc)
        with self._lock:
            self._closed = True
        self._stop_following.set()
        if self._follower is not None and self._follower is not threading.current_thread():
            self._follower.join(timeout=5)
        with self._compacting:
            if self._log is not None:
                self._log.close()
                self._log = None
        if self.datadir is not None:
            self.datadir.unlock()
        self.doc.unobserve(self._doc_sub)
        for root, subscription in self._deep_subs:
            root.unobserve(subscription)
        self._deep_subs.clear()
        for subscription in self._subscriptions:
            subscription.drop()
        self._subscriptions.clear()
        self._feed.close()

    def __enter__(self) -> Replica:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ReadScope:
    """The replica lock, after applying what other processes appended (skipped inside a write)."""

    __slots__ = ("_replica",)

    def __init__(self, replica: Replica) -> None:
        self._replica = replica

    def __enter__(self) -> None:
        replica = self._replica
        replica._lock.acquire()
        log_ = replica._log
        if log_ is not None and replica._depth == 0 and not replica._snapshot and not replica._closed and log_.changed():
            try:
                with log_.lock():
                    replica._catch_up()
            except BaseException:
                replica._lock.release()
                raise

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._replica._lock.release()


class _SnapshotScope:
    """A read scope whose reads share one Doc transaction (opened here unless one is active).

    A read helper acts in the active transaction, so several reads cost one transaction and
    one look at the shared log instead of one each, and see one state. Nothing may write
    inside: a write scope refuses (its update would escape the log)."""

    __slots__ = ("_replica", "_txn")

    def __init__(self, replica: Replica) -> None:
        self._replica = replica
        self._txn: Any = None

    def __enter__(self) -> None:
        replica = self._replica
        _ReadScope(replica).__enter__()
        try:
            if replica._depth == 0 and not replica._snapshot:
                txn = replica.doc.transaction()
                txn.__enter__()
                self._txn = txn
            replica._snapshot += 1
        except BaseException:
            replica._lock.release()
            raise

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        replica = self._replica
        try:
            replica._snapshot -= 1
            txn, self._txn = self._txn, None
            if txn is not None:
                txn.__exit__(exc_type, exc, tb)
        finally:
            replica._lock.release()


class _WriteScope:
    """Context for one (possibly nested) write; a class, not a generator, as it is on the hot path.

    The outermost scope holds the log's append lock from before it catches up until its
    record is appended, so what it writes is decided on everything any process wrote. A
    nested scope writes in the outer one's Doc transaction without entering pycrdt's
    nested transaction (which only counts leases)."""

    __slots__ = ("_replica", "_origin", "_transaction", "_txn", "_outer", "_lsn", "_head")

    def __init__(self, replica: Replica, origin: str | None, *, transaction: bool = False) -> None:
        self._replica = replica
        self._origin = origin
        self._transaction = transaction
        self._txn: Any = None
        self._outer = False
        self._lsn = 0
        self._head: Any = None

    def __enter__(self) -> None:
        replica = self._replica
        replica._lock.acquire()
        if replica._closed or replica._snapshot:
            replica._lock.release()
            if replica._closed:
                raise ClosedError("the replica is closed")
            raise RuntimeError("a write inside a snapshot read (DocAccess.snapshot) is not allowed")
        self._outer = replica._depth == 0
        try:
            if self._outer and replica._log is not None:
                self._head = replica._log.lock()
                self._head.acquire()
                replica._catch_up()
                replica._log.prepare_append()
            if self._outer:
                replica._origin = self._origin
            replica._depth += 1
            if self._outer or getattr(replica.doc, "_txn", None) is None:
                self._txn = replica.doc.transaction()
                try:
                    self._txn.__enter__()
                except BaseException:
                    replica._depth -= 1
                    raise
        except BaseException:
            if self._head is not None:
                self._head.release()
                self._head = None
            replica._lock.release()
            raise

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        replica = self._replica
        try:
            try:
                if self._txn is not None:
                    self._txn.__exit__(exc_type, exc, tb)
            finally:
                replica._depth -= 1
                if self._outer:
                    self._lsn = replica._last_lsn
                    try:
                        replica._finish_transaction()
                    finally:
                        if self._head is not None:
                            self._head.release()
                            self._head = None
        finally:
            replica._lock.release()
        if self._outer and exc_type is None:
            replica._sync_after(self._lsn, transaction=self._transaction)
