"""The transaction WAL of a got directory whose replica this process holds.

:class:`ManagedWAL` is the ``wal`` of :class:`~compat.tx_manager.TransactionManager` and
:class:`~compat.recovery.RecoveryManager`. It writes the same lines as
:class:`~compat.wal.WALManager` (same checksums, sequence numbers strictly increasing,
same replay), but it never fsyncs an append: a commit's durable unit is its replica
transaction, and the WAL only lets recovery name the transactions a crash interrupted.
Every ManagedWAL of one directory in a process shares one open file, one sequence and
the directory's ``.wal.lock``, held until the last of them closes; another process
cannot hold the same got directory anyway (its replica is locked).

:func:`scan_wal` reads a WAL in one pass for recovery (open transactions, entity ids,
corrupt lines), resuming from where the previous scan of an unchanged prefix stopped.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, ContextManager, Dict, Iterator, List, Optional, Set, Tuple, Union

from compat.checksums import CANONICAL_JSON, DEFAULT_TRUNCATE, canonical_bytes, compute_checksum
from compat.config import DurabilityMode
from compat.registry import Entry, RefCountedRegistry
from compat.types import utc_now_iso
from compat.wal import (
    LOCK_FILE_NAME,
    TransactionWALEntry,
    WALManager,
    _is_legacy_line,
    _tail_seq,
    retire_wal_file,
)

_ENTRY_KEYS = frozenset({"seq", "ts", "tx", "op", "data", "checksum"})
_FINISHING_OPS = frozenset({"TX_COMMIT", "TX_ABORT", "TX_ROLLBACK"})


# ---------------------------------------------------------------------- scanning


@dataclass
class WalScan:
    """What one pass over a WAL found."""

    open_txs: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    """Transactions begun and not finished, in order of TX_BEGIN: ``{tx_id, state, snapshot}``."""
    tx_writes: Dict[str, List[str]] = field(default_factory=dict)
    """Entity ids each open transaction logged a WRITE for."""
    known_ids: Set[str] = field(default_factory=set)
    """Entity ids named by WRITE or ADOPTED lines (raw lines, checksums not checked)."""
    corrupt: int = 0
    """Non-blank lines that are not JSON, lack a checksum or fail it."""
    max_seq: int = 0

    def copy(self) -> "WalScan":
        """An independent copy (the cache keeps the original)."""
        return WalScan(
            {k: dict(v) for k, v in self.open_txs.items()},
            {k: list(v) for k, v in self.tx_writes.items()},
            set(self.known_ids),
            self.corrupt,
            self.max_seq,
        )

    def feed(self, line: str) -> None:
        """Account for one line of the WAL."""
        text = line.strip()
        if not text:
            return
        try:
            data = json.loads(text)
        except ValueError:
            self.corrupt += 1
            return
        if not isinstance(data, dict):
            self.corrupt += 1
            return
        checksum = data.get("checksum")
        intact = bool(checksum) and compute_checksum({k: v for k, v in data.items() if k != "checksum"}) == checksum
        if not intact:
            self.corrupt += 1
        op = data.get("op")
        if op == "WRITE" and isinstance(data.get("data"), dict):
            entity_id = data["data"].get("entity_id")
            if isinstance(entity_id, str):
                self.known_ids.add(entity_id)
        elif op == "ADOPTED" and isinstance(data.get("entity_id"), str):
            self.known_ids.add(data["entity_id"])
        if _is_legacy_line(data) or not checksum:
            return
        if set(data) != _ENTRY_KEYS:
            try:
                intact = TransactionWALEntry.from_dict(data).verify()
            except (TypeError, ValueError):
                intact = False
        if intact:
            self._track(data)

    def _track(self, data: Dict[str, Any]) -> None:
        op, tx_id = data.get("op"), data.get("tx", "")
        seq = data.get("seq")
        if isinstance(seq, int) and seq > self.max_seq:
            self.max_seq = seq
        payload = data.get("data") if isinstance(data.get("data"), dict) else {}
        if op == "TX_BEGIN":
            self.open_txs[tx_id] = {"tx_id": tx_id, "state": "ACTIVE", "snapshot": payload.get("snapshot", 0)}
            self.tx_writes[tx_id] = []
        elif op == "TX_PREPARE":
            if tx_id in self.open_txs:
                self.open_txs[tx_id]["state"] = "PREPARING"
        elif op in _FINISHING_OPS:
            self.open_txs.pop(tx_id, None)
            self.tx_writes.pop(tx_id, None)
        elif op == "WRITE" and tx_id in self.tx_writes and isinstance(payload.get("entity_id"), str):
            self.tx_writes[tx_id].append(payload["entity_id"])


@dataclass
class _ScanCache:
    offset: int
    digest: bytes
    scan: WalScan


_SCANS: Dict[Path, _ScanCache] = {}
_SCANS_LOCK = threading.Lock()

SCAN_CACHE_NAME = "_scan_cache.json"
"""File beside ``current.wal`` keeping the last scan, so a new process resumes it."""


def _load_cache(path: Path) -> Optional[_ScanCache]:
    try:
        raw = json.loads((path.parent / SCAN_CACHE_NAME).read_text(encoding="utf-8"))
        scan = WalScan(
            open_txs={str(tx["tx_id"]): dict(tx) for tx in raw["open_txs"]},
            tx_writes={str(k): [str(i) for i in v] for k, v in raw["tx_writes"].items()},
            known_ids={str(i) for i in raw["known_ids"]},
            corrupt=int(raw["corrupt"]),
            max_seq=int(raw["max_seq"]),
        )
        return _ScanCache(int(raw["offset"]), bytes.fromhex(raw["digest"]), scan)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _save_cache(path: Path, cache: _ScanCache) -> None:
    scan = cache.scan
    body = {
        "offset": cache.offset,
        "digest": cache.digest.hex(),
        "open_txs": list(scan.open_txs.values()),
        "tx_writes": scan.tx_writes,
        "known_ids": sorted(scan.known_ids),
        "corrupt": scan.corrupt,
        "max_seq": scan.max_seq,
    }
    target = path.parent / SCAN_CACHE_NAME
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(body), encoding="utf-8")
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)


def scan_wal(wal_file: Union[str, Path]) -> WalScan:
    """Scan ``wal_file`` (a missing file scans empty), resuming the previous scan of an unchanged prefix.

    The previous scan comes from memory, or from ``_scan_cache.json`` (written after each
    scan that read new lines). A prefix that changed in any byte is scanned again."""
    path = Path(wal_file).resolve()
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return WalScan()
    end = content.rfind(b"\n") + 1
    with _SCANS_LOCK:
        cached = _SCANS.get(path)
    if cached is None:
        cached = _load_cache(path)
    start, scan, hasher = 0, WalScan(), hashlib.sha256()
    if cached is not None and cached.offset <= end:
        prefix = hashlib.sha256(content[: cached.offset])
        if prefix.digest() == cached.digest:
            start, scan, hasher = cached.offset, cached.scan.copy(), prefix
    for line in content[start:end].decode("utf-8", errors="replace").splitlines():
        scan.feed(line)
    hasher.update(content[start:end])
    fresh = _ScanCache(end, hasher.digest(), scan.copy())
    with _SCANS_LOCK:
        _SCANS[path] = fresh
    if end != start:
        _save_cache(path, fresh)
    tail = content[end:]
    if tail.strip():
        scan.feed(tail.decode("utf-8", errors="replace"))
    return scan


# ------------------------------------------------------------------ shared file


USERS_FILE_NAME = ".wal.users"
"""Held shared (flock) by every process with the WAL open; exclusively only by one that is alone."""


def _flat_canonical(data: Dict[str, Any]) -> str:
    """The canonical JSON of an entry's data: written here for the flat dicts of strings and ints every
    entry of a transaction carries (the encoder builds itself anew per call), else by the encoder."""
    if type(data) is dict:
        parts = []
        for key in sorted(data) if all(type(key) is str for key in data) else ():
            value = data[key]
            kind = type(value)
            if kind is str:
                parts.append(f"{encode_basestring_ascii(key)}:{encode_basestring_ascii(value)}")
            elif kind is int:
                parts.append(f"{encode_basestring_ascii(key)}:{value}")
            else:
                break
        else:
            if len(parts) == len(data):
                return "{" + ",".join(parts) + "}"
    return CANONICAL_JSON.encode(data)


def entry_line(seq: int, ts: str, tx_id: str, operation: str, data: Dict[str, Any]) -> bytes:
    """One WAL line: the canonical JSON of ``{seq, ts, tx, op, data}`` with its checksum added last.

    The body's keys are written in their sorted order by hand (the canonical encoder would
    sort and walk a dict built for the purpose, twice the cost); anything but the usual
    types goes through that encoder."""
    if type(seq) is int and type(ts) is str and type(tx_id) is str and type(operation) is str:
        text = (f'{{"data":{_flat_canonical(data)},"op":{encode_basestring_ascii(operation)},"seq":{seq},'
                f'"ts":{encode_basestring_ascii(ts)},"tx":{encode_basestring_ascii(tx_id)}}}')
        canonical = text.encode("ascii")
    else:
        canonical = canonical_bytes({"seq": seq, "ts": ts, "tx": tx_id, "op": operation, "data": data})
    checksum = hashlib.sha256(canonical).hexdigest()[:DEFAULT_TRUNCATE]
    return canonical[:-1] + b',"checksum":"' + checksum.encode("ascii") + b'"}\n'


class _WalFile:
    """The open WAL of one directory in this process: file, sequence and locks shared by its ManagedWALs.

    Any number of processes append to one WAL: each append holds ``.wal.lock`` (flock,
    blocking in the kernel, released by it if the holder dies) and continues the sequence
    from the last line another process wrote; ``.wal.users`` is held shared for as long as
    the WAL is open here, so recovery can tell whether it is alone."""

    def __init__(self, wal_dir: Path, wal_file: Path, seq_file: Path, sequence: int) -> None:
        self.wal_dir = wal_dir
        self.wal_file = wal_file
        self.seq_file = seq_file
        self.sequence = sequence
        self.lock = threading.RLock()
        self._handle: Optional[Any] = None
        self._inode: Optional[Tuple[int, int]] = None
        self._known_end = -1
        self._depth = 0
        self._checked = False
        self._wal_path = str(wal_file)
        wal_dir.mkdir(parents=True, exist_ok=True)
        self._users_fd: Optional[int] = os.open(wal_dir / USERS_FILE_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._users_fd, fcntl.LOCK_SH)
        self._lock_fd: Optional[int] = self._open_lock()
        _OPEN_FILES.add(self)

    def _open_lock(self) -> int:
        return os.open(self.wal_dir / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def reopen_lock_after_fork(self) -> None:
        """In a forked child: take a descriptor of its own for ``.wal.lock`` and a fresh thread lock.

        A flock belongs to the open file description, which a child shares with its parent
        through the inherited descriptor: locking it again would not exclude the parent. The
        child has one thread, so no other can hold the thread lock it inherited."""
        if self._lock_fd is not None:
            try:
                os.close(self._lock_fd)
            except OSError:
                pass
            self._lock_fd = self._open_lock()
        self.lock = threading.RLock()
        self._depth = 0
        self._checked = False

    def _enter(self) -> None:
        """Take the thread lock, then (outermost only) ``.wal.lock`` on the descriptor kept open for it."""
        self.lock.acquire()
        if self._depth == 0:
            assert self._lock_fd is not None, "the shared WAL file is closed"
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            except BaseException:
                self.lock.release()
                raise
        self._depth += 1

    def _leave(self) -> None:
        self._depth -= 1
        try:
            if self._depth == 0:
                self._checked = False
                if self._lock_fd is not None:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            self.lock.release()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the thread lock and ``.wal.lock`` (reentrant); appends from every process serialise here."""
        self._enter()
        try:
            yield
        finally:
            self._leave()

    @contextmanager
    def alone(self) -> Iterator[bool]:
        """Yield True, holding ``.wal.users`` exclusively, when no other process has the WAL open."""
        with self.lock:
            fd = self._users_fd
            assert fd is not None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fcntl.flock(fd, fcntl.LOCK_SH)
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_SH)

    def _open(self) -> Any:
        """The append handle, reopened if the file was removed or replaced meanwhile (``exclusive`` held).

        One ``stat`` of the path tells both: whether it is still our file, and where it ends. Once
        checked, no other process can append or replace it until ``.wal.lock`` is let go, so later
        appends within the same hold (a commit's TX_PREPARE and TX_COMMIT) need no second look."""
        handle = self._handle
        if handle is not None and self._checked:
            return handle
        self._checked = True
        if handle is not None:
            try:
                info = os.stat(self._wal_path)
                if (info.st_dev, info.st_ino) == self._inode:
                    return self._caught_up(handle, info.st_size)
            except FileNotFoundError:
                pass
            handle.close()
            self._handle = None
        handle = open(self._wal_path, "ab+", buffering=0)
        info = os.fstat(handle.fileno())
        self._inode = (info.st_dev, info.st_ino)
        self._known_end = -1
        self._handle = handle
        return self._caught_up(handle, info.st_size)

    def _caught_up(self, handle: Any, end: int) -> Any:
        """Continue the sequence after lines other processes appended, and end a torn line.

        ``end`` is the file's size as just found; ``_known_end`` is left there, so the append
        can tell its own end."""
        if end != self._known_end:
            if end > 0:
                self.sequence = max(self.sequence, _tail_seq(handle.fileno(), end))
                if os.pread(handle.fileno(), 1, end - 1) != b"\n":
                    end += handle.write(b"\n") or 0
            self._known_end = end
        return handle

    def _write(self, handle: Any, line: bytes) -> None:
        """Append ``line``; the file ends where this process left it unless another one appends (O_APPEND)."""
        self._known_end += handle.write(line) or 0

    def append(self, line: bytes) -> None:
        """Append one complete line (no fsync)."""
        self._enter()
        try:
            self._write(self._open(), line)
        finally:
            self._leave()

    def log(self, tx_id: str, operation: str, data: Dict[str, Any]) -> int:
        """Append one entry with the next sequence number (of all processes) and return it."""
        self._enter()
        try:
            handle = self._open()
            self.sequence += 1
            self._write(handle, entry_line(self.sequence, utc_now_iso(), tx_id, operation, data))
            return self.sequence
        finally:
            self._leave()

    def next_seq(self) -> int:
        """Take the next sequence number and persist it."""
        with self.exclusive():
            self._open()
            self.sequence = max(self.sequence, self._read_sequence_file()) + 1
            self.persist_sequence()
            return self.sequence

    def _read_sequence_file(self) -> int:
        try:
            value = json.loads(self.seq_file.read_text(encoding="utf-8")).get("seq", 0)
        except (OSError, ValueError, AttributeError):
            return 0
        return value if isinstance(value, int) and value >= 0 else 0

    def persist_sequence(self) -> None:
        """Write the sequence file (atomically; never lowering what another process persisted)."""
        with self.exclusive():
            self.sequence = max(self.sequence, self._read_sequence_file())
            tmp = self.seq_file.with_name(f"{self.seq_file.name}.{os.getpid()}.tmp")
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump({"seq": self.sequence}, handle)
            os.replace(tmp, self.seq_file)

    def truncate(self, archive_dir: Path, archive: bool) -> Optional[Path]:
        """Archive (or delete) the current file, as :meth:`WALManager.truncate`."""
        with self.exclusive():
            if self.wal_file.exists():
                self._open()
            self.persist_sequence()
            if self._handle is not None:
                self._handle.close()
                self._handle = None
            if not self.wal_file.exists():
                return None
            return retire_wal_file(self.wal_file, archive_dir, archive)

    def close(self) -> None:
        """Persist the sequence, close the file and stop counting as a user of the WAL."""
        with self.lock:
            try:
                self.persist_sequence()
            finally:
                if self._handle is not None:
                    self._handle.close()
                    self._handle = None
                if self._users_fd is not None:
                    os.close(self._users_fd)
                    self._users_fd = None
                if self._lock_fd is not None:
                    os.close(self._lock_fd)
                    self._lock_fd = None


_FILES: "RefCountedRegistry[Path, _WalFile]" = RefCountedRegistry("the shared WAL file", _WalFile.close)
_OPEN_FILES: "weakref.WeakSet[_WalFile]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for shared in list(_OPEN_FILES):
        shared.reopen_lock_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _join(wal: WALManager) -> "Entry[Path, _WalFile]":
    return _FILES.acquire(
        wal.wal_dir.resolve(), lambda: _WalFile(wal.wal_dir, wal.wal_file, wal.seq_file, wal._sequence)
    )


class ManagedWAL(WALManager):
    """A WALManager for a got directory held by this process: shared file, no fsync per append.

    ``durability`` is kept as an attribute (it says how the commits it logs are made
    durable), but appends never fsync; ``fsync_now()`` still does."""

    def __init__(self, wal_dir: Union[str, Path], durability: DurabilityMode = DurabilityMode.BALANCED) -> None:
        super().__init__(wal_dir, durability)
        self._entry = _join(self)
        assert self._entry.value is not None
        self._shared: _WalFile = self._entry.value
        self._finalizer = weakref.finalize(self, _FILES.release_later, self._entry)

    def _last_logged_seq(self) -> int:
        """The shared sequence when this process already has the WAL open (no tail scan then)."""
        shared = _FILES.get(self.wal_dir.resolve())
        return shared.sequence if shared is not None else super()._last_logged_seq()

    def log(self, tx_id: str, operation: str, data: Dict[str, Any]) -> int:
        """Append one entry (no fsync) and return its sequence number."""
        return self._shared.log(tx_id, operation, data)

    def _next_seq(self) -> int:
        """Take the next sequence number, persist it and return it."""
        return self._shared.next_seq()

    def append_record(self, record: Dict[str, Any]) -> None:
        """Append a line that is not a transaction entry (recovery's ADOPTED lines)."""
        self._shared.append((json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8"))

    def truncate(self, archive: bool = True) -> Optional[Path]:
        """Archive ``current.wal`` (returning the new path) or delete it; the sequence is kept."""
        return self._shared.truncate(self.archive_dir, archive)

    def exclusive(self) -> ContextManager[None]:
        """Hold ``wal/.wal.lock`` (reentrant) so that the appends made meanwhile take it, and look at the
        file, once: a commit holds it from TX_PREPARE to TX_COMMIT (the replica transaction between never
        waits on the WAL, so the lock order WAL -> replica log has no reverse)."""
        return self._shared.exclusive()

    def scan(self) -> WalScan:
        """One pass over ``current.wal`` (cached for an unchanged prefix)."""
        with self._shared.exclusive():
            return scan_wal(self.wal_file)

    def alone(self) -> ContextManager[bool]:
        """True (and no other process may open the WAL meanwhile) when this process is its only user."""
        return self._shared.alone()

    def get_incomplete_transactions(self) -> List[Dict[str, Any]]:
        """Transactions begun but not finished, in order of TX_BEGIN."""
        return [dict(tx) for tx in self.scan().open_txs.values()]

    def close(self) -> None:
        """Stop using the shared file (the last user persists the sequence and releases the lock)."""
        if self._finalizer.detach() is not None:
            _FILES.release(self._entry)

    def __enter__(self) -> "ManagedWAL":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = ["ManagedWAL", "WalScan", "scan_wal"]
