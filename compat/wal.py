"""Transaction write-ahead log of the old ``cortical.got`` API.

``WALManager`` appends one compact JSON line per operation to
``<wal_dir>/current.wal``; each line carries a sequence number and a checksum in
the canonical form of :mod:`compat.checksums`, so logs written by cortical.got
stay readable. Appends are serialised across threads and processes by a lock
file, and sequence numbers stay strictly increasing on one directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterator, List, Mapping, Optional, Union

from compat.checksums import compute_checksum
from compat.config import DurabilityMode
from compat.locking import INITIAL_BACKOFF, MAX_BACKOFF
from compat.types import utc_now_iso

WAL_FILE_NAME = "current.wal"
SEQUENCE_FILE_NAME = "_sequence.json"
ARCHIVE_DIR_NAME = "archived"
LOCK_FILE_NAME = ".wal.lock"

APPEND_LOCK_TIMEOUT = 30.0
"""Seconds an append waits for another writer before giving up with ``RuntimeError``."""

_TAIL_SCAN_BYTES = 65536


@dataclass
class TransactionWALEntry:
    """One WAL record; the checksum covers ``{seq, ts, tx, op, data}`` and is computed when empty."""

    operation: str
    timestamp: str = field(default_factory=utc_now_iso)
    payload: Dict[str, Any] = field(default_factory=dict)
    checksum: str = ""
    seq: int = 0
    tx_id: str = ""

    def __post_init__(self) -> None:
        if not self.checksum:
            self.checksum = self._compute_checksum()

    def _compute_checksum(self) -> str:
        return compute_checksum(
            {"seq": self.seq, "ts": self.timestamp, "tx": self.tx_id, "op": self.operation, "data": self.payload}
        )

    def verify(self) -> bool:
        """True when the stored checksum matches the content."""
        return self.checksum == self._compute_checksum()

    def to_dict(self) -> Dict[str, Any]:
        """The on-disk line as a dict: ``{seq, ts, tx, op, data, checksum}``."""
        return {
            "seq": self.seq,
            "ts": self.timestamp,
            "tx": self.tx_id,
            "op": self.operation,
            "data": self.payload,
            "checksum": self.checksum,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TransactionWALEntry":
        """Rebuild from a line dict; missing keys default to 0, "" or {} (a missing checksum is recomputed)."""
        return cls(
            operation=data.get("op", ""),
            timestamp=data.get("ts", ""),
            payload=data.get("data", {}),
            checksum=data.get("checksum", ""),
            seq=data.get("seq", 0),
            tx_id=data.get("tx", ""),
        )


def _is_legacy_line(data: Mapping[str, Any]) -> bool:
    """True for lines that are not transaction records (e.g. recovery's ADOPTED lines)."""
    if "entity_id" in data:
        return True
    if isinstance(data.get("timestamp"), (int, float)):
        return True
    return "seq" not in data and "tx" not in data


def retire_wal_file(wal_file: Path, archive_dir: Path, archive: bool) -> Optional[Path]:
    """Move ``wal_file`` to ``archive_dir/<UTC YYYYMMDD_HHMMSS>[_N].wal`` and return that path, or delete it."""
    if not archive:
        wal_file.unlink()
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S")
    target = archive_dir / f"{stamp}.wal"
    suffix = 1
    while target.exists():
        target = archive_dir / f"{stamp}_{suffix}.wal"
        suffix += 1
    wal_file.rename(target)
    return target


_LAST_LINE_BYTES = 4096


def _tail_seq(fd: int, end: int) -> int:
    """The seq of the last complete entry line before ``end`` (0 if none is found near the end)."""
    span = _LAST_LINE_BYTES
    while True:
        start = max(0, end - span)
        chunk = os.pread(fd, end - start, start)
        lines = chunk.split(b"\n")
        complete = lines[1:-1] if start > 0 else lines[:-1]
        for line in reversed(complete):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict) and isinstance(value.get("seq"), int):
                return int(value["seq"])
        if start == 0 or span >= 1 << 20:
            return 0
        span *= 4


class WALManager:
    """Append-only transaction log in ``wal_dir`` with replay and crash-state queries.

    PARANOID fsyncs every append; BALANCED leaves it to ``fsync_now()`` at commit; RELAXED never fsyncs."""

    def __init__(self, wal_dir: Union[str, Path], durability: DurabilityMode = DurabilityMode.BALANCED) -> None:
        self.wal_dir: Path = Path(wal_dir)
        self.durability: DurabilityMode = DurabilityMode(durability)
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        self.archive_dir: Path = self.wal_dir / ARCHIVE_DIR_NAME
        self.archive_dir.mkdir(exist_ok=True)
        self.wal_file: Path = self.wal_dir / WAL_FILE_NAME
        self.seq_file: Path = self.wal_dir / SEQUENCE_FILE_NAME
        self._thread_lock = threading.RLock()
        self._file_lock = AppendLock(self.wal_dir / LOCK_FILE_NAME)
        self._sequence: int = max(self._read_sequence_file(), self._last_logged_seq())

    # ------------------------------------------------------------- writing

    def log(self, tx_id: str, operation: str, data: Dict[str, Any]) -> int:
        """Append one entry under the append lock and return its sequence number."""
        with self._exclusive(), open(self.wal_file, "ab+") as handle:
            seq = self._next_seq(_tail_seq(handle.fileno(), os.fstat(handle.fileno()).st_size))
            entry = TransactionWALEntry(
                operation=operation, timestamp=utc_now_iso(), payload=data, seq=seq, tx_id=tx_id
            )
            line = (json.dumps(entry.to_dict(), separators=(",", ":")) + "\n").encode("utf-8")
            if _ends_with_torn_line(handle):
                line = b"\n" + line
            handle.write(line)
            handle.flush()
            if self.durability.fsync_every_append:
                os.fsync(handle.fileno())
            return seq

    def log_tx_begin(self, tx_id: str, snapshot_version: int) -> int:
        """Log TX_BEGIN with the snapshot version the transaction reads at."""
        return self.log(tx_id, "TX_BEGIN", {"snapshot": snapshot_version})

    def log_write(self, tx_id: str, entity_id: str, old_version: int, new_version: int) -> int:
        """Log a buffered WRITE of ``entity_id`` (versions before and after)."""
        return self.log(
            tx_id, "WRITE", {"entity_id": entity_id, "old_version": old_version, "new_version": new_version}
        )

    def log_tx_prepare(self, tx_id: str) -> int:
        """Log that the transaction entered the prepare phase."""
        return self.log(tx_id, "TX_PREPARE", {})

    def log_tx_commit(self, tx_id: str, version: int) -> int:
        """Log a successful commit and the global version it produced."""
        return self.log(tx_id, "TX_COMMIT", {"version": version})

    def log_tx_abort(self, tx_id: str, reason: str) -> int:
        """Log a failed commit and why it failed."""
        return self.log(tx_id, "TX_ABORT", {"reason": reason})

    def log_tx_rollback(self, tx_id: str, reason: str) -> int:
        """Log an explicit or recovery rollback and why."""
        return self.log(tx_id, "TX_ROLLBACK", {"reason": reason})

    def _next_seq(self, at_end: Optional[int] = None) -> int:
        """Advance the sequence (never below what another writer persisted), persist it and return it.

        ``at_end`` is the seq of the WAL's last line when the caller has the file open (else it
        is read here): a managed WAL (the transaction manager's) persists the sequence file
        only when it closes, so the file alone may lag behind its lines."""
        with self._exclusive():
            if at_end is None:
                at_end = self._seq_at_end()
            self._sequence = max(self._sequence, self._read_sequence_file(), at_end) + 1
            self._write_sequence_file(self._sequence)
            return self._sequence

    # ------------------------------------------------------------- reading

    def replay(self) -> List[Dict[str, Any]]:
        """All valid entries in file order as six-key dicts; never raises, ``[]`` without a file."""
        return [entry.to_dict() for entry in self.replay_entries()]

    def replay_entries(self) -> List[TransactionWALEntry]:
        """All valid entries in file order, skipping blank, torn, legacy and checksum-failing lines."""
        try:
            return list(self._valid_entries())
        except OSError:
            return []

    def get_incomplete_transactions(self) -> List[Dict[str, Any]]:
        """Transactions begun but neither committed, aborted nor rolled back, in order of TX_BEGIN."""
        open_txs: Dict[str, Dict[str, Any]] = {}
        for entry in self.replay_entries():
            if entry.operation == "TX_BEGIN":
                payload = entry.payload if isinstance(entry.payload, dict) else {}
                open_txs[entry.tx_id] = {
                    "tx_id": entry.tx_id,
                    "state": "ACTIVE",
                    "snapshot": payload.get("snapshot", 0),
                }
            elif entry.operation == "TX_PREPARE":
                if entry.tx_id in open_txs:
                    open_txs[entry.tx_id]["state"] = "PREPARING"
            elif entry.operation in ("TX_COMMIT", "TX_ABORT", "TX_ROLLBACK"):
                open_txs.pop(entry.tx_id, None)
        return list(open_txs.values())

    # ---------------------------------------------------------- maintenance

    def fsync_now(self) -> None:
        """Fsync the WAL and sequence files, if present, whatever the durability mode."""
        for path in (self.wal_file, self.seq_file):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def truncate(self, archive: bool = True) -> Optional[Path]:
        """Move ``current.wal`` to ``archived/`` (returning the new path) or delete it; the sequence is kept."""
        with self._exclusive():
            if not self.wal_file.exists():
                return None
            return retire_wal_file(self.wal_file, self.archive_dir, archive)

    # ------------------------------------------------------------ internals

    def _exclusive(self) -> "_AppendGuard":
        return _AppendGuard(self._thread_lock, self._file_lock)

    def _valid_entries(self) -> Iterator[TransactionWALEntry]:
        try:
            handle = open(self.wal_file, "r", encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        with handle:
            for line in handle:
                entry = _parse_line(line)
                if entry is not None:
                    yield entry

    def _read_sequence_file(self) -> int:
        try:
            with open(self.seq_file, "r", encoding="utf-8") as handle:
                value = json.load(handle).get("seq", 0)
            return value if isinstance(value, int) and value >= 0 else 0
        except (OSError, ValueError, AttributeError):
            return 0

    def _write_sequence_file(self, seq: int) -> None:
        tmp = self.seq_file.with_name(f"{self.seq_file.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump({"seq": seq}, handle)
            handle.flush()
            if self.durability.fsync_every_append:
                os.fsync(handle.fileno())
        os.replace(tmp, self.seq_file)

    def _seq_at_end(self) -> int:
        """The seq of the WAL's last line (0 without one)."""
        try:
            with open(self.wal_file, "rb") as handle:
                return _tail_seq(handle.fileno(), os.fstat(handle.fileno()).st_size)
        except OSError:
            return 0

    def _last_logged_seq(self) -> int:
        """Highest seq among the valid lines at the end of the WAL (guards against a lost sequence file)."""
        try:
            with open(self.wal_file, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - _TAIL_SCAN_BYTES))
                tail = handle.read().decode("utf-8", errors="replace")
        except OSError:
            return 0
        seqs = [entry.seq for entry in map(_parse_line, tail.splitlines()) if entry is not None]
        return max((s for s in seqs if isinstance(s, int)), default=0)


class AppendLock:
    """``wal/.wal.lock`` as every appender takes it: an exclusive ``flock``, reentrant in this object.

    Not a ProcessLock: the kernel drops a flock when its holder dies, so it is never stale, and
    stale recovery here would unlink the file while a managed WAL (which keeps its descriptor
    open and writes no holder pid) holds it, letting two processes append with one sequence
    number. Callers serialise their threads (the manager's thread lock)."""

    def __init__(self, lock_path: Path) -> None:
        self.lock_path = lock_path
        self._fd: Optional[int] = None
        self._count = 0
        self._pid = 0

    def acquire(self, timeout: float) -> bool:
        """Take the lock, retrying with backoff for up to ``timeout`` seconds; False when it stays held."""
        if self._fd is not None:
            if self._pid == os.getpid():
                self._count += 1
                return True
            os.close(self._fd)
            self._fd = None
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + timeout
        delay = INITIAL_BACKOFF
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    os.close(fd)
                    return False
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, MAX_BACKOFF)
        self._fd, self._count, self._pid = fd, 1, os.getpid()
        return True

    def release(self) -> None:
        """Undo one acquire; the last closes the descriptor, which releases the flock."""
        if self._fd is None:
            return
        self._count -= 1
        if self._count == 0:
            fd, self._fd = self._fd, None
            os.close(fd)


class _AppendGuard:
    """Context manager holding the manager's thread lock and its cross-process lock file."""

    def __init__(self, thread_lock: "threading.RLock", file_lock: AppendLock) -> None:
        self._thread_lock = thread_lock
        self._file_lock = file_lock

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        if not self._file_lock.acquire(timeout=APPEND_LOCK_TIMEOUT):
            self._thread_lock.release()
            raise RuntimeError(f"Failed to acquire lock: {self._file_lock.lock_path}")

    def __exit__(self, *exc_info: object) -> None:
        self._file_lock.release()
        self._thread_lock.release()


def _ends_with_torn_line(handle: BinaryIO) -> bool:
    """True when the file does not end with a newline, so an append must not extend a torn line."""
    end = handle.seek(0, os.SEEK_END)
    if end == 0:
        return False
    handle.seek(end - 1)
    return handle.read(1) != b"\n"


def _parse_line(line: str) -> Optional[TransactionWALEntry]:
    """The verified entry on ``line``, or None for blank, torn, legacy, unsigned or tampered lines."""
    text = line.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or _is_legacy_line(data) or not data.get("checksum"):
        return None
    try:
        entry = TransactionWALEntry.from_dict(data)
        return entry if entry.verify() else None
    except (TypeError, ValueError):
        return None


__all__ = ["WALManager", "TransactionWALEntry"]
