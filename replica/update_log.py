"""UpdateLog: the append-only, CRC-framed, segmented log of every Doc update.

Appends go to the OS with one write each; when they reach the disk depends on the
durability mode. Concurrent callers of `sync` share one fsync (group commit).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable
from typing import Protocol
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from .durability import Durability
from .errors import ClosedError, DiskFullError, LogCorruptionError, MissingSegmentError, StorageError
from .frames import (
    FRAME_HEADER_SIZE,
    KIND_UPDATE,
    ZERO_FRAME_HEADER,
    SEGMENT_HEADER_SIZE,
    FrameProblem,
    Record,
    check_segment_header,
    decode_at,
    encode_record,
    encode_segment_header,
    find_next_valid,
)
from .log_head import LogHead

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".log"
DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024
DEFAULT_FLUSH_INTERVAL = 0.05
SCAN_SLACK = 4096
RELEASE_CHUNK = 4 * 1024 * 1024


def segment_name(first_lsn: int) -> str:
    """File name of the segment whose first record has `first_lsn`."""
    return f"{first_lsn:016d}{SEGMENT_SUFFIX}"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """Segments in `directory` as (first lsn, path), oldest first; foreign files are ignored."""
    found: list[tuple[int, Path]] = []
    if not directory.is_dir():
        return found
    for path in directory.iterdir():
        stem = path.name[: -len(SEGMENT_SUFFIX)]
        if path.name.endswith(SEGMENT_SUFFIX) and stem.isdigit() and len(stem) == 16:
            found.append((int(stem), path))
    found.sort()
    return found


def fsync_directory(directory: Path) -> None:
    """Make a created, renamed or removed directory entry durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_sync_file = getattr(os, "fdatasync", os.fsync)


@dataclass
class TornTail:
    """What recovery cut off the end of the newest segment, and why."""

    path: Path
    offset: int
    dropped_bytes: int
    reason: str


@dataclass
class ReplayReport:
    """What reading the log found: records replayed and any torn tail dropped."""

    records: int = 0
    last_lsn: int = 0
    torn_tail: TornTail | None = None
    segments: int = 0
    bytes_read: int = 0
    notes: list[str] = field(default_factory=list)


def read_segment(
    path: Path, *, is_last: bool, after_lsn: int, expected_lsn: int | None
) -> tuple[list[Record], int, TornTail | None, int]:
    """Read one segment: its records with lsn > after_lsn, its last lsn, any torn tail, its end.

    Segments are preallocated, so zero bytes after the last record are the clean end. In
    the newest segment a bad record (or a hole of zeros) followed by nothing valid is a
    torn tail; any other damage raises LogCorruptionError naming the file and offset.
    """
    return read_segment_bytes(path.read_bytes(), path, is_last=is_last, after_lsn=after_lsn,
                              expected_lsn=expected_lsn)


def read_segment_bytes(
    data: bytes, path: Path, *, is_last: bool, after_lsn: int, expected_lsn: int | None
) -> tuple[list[Record], int, TornTail | None, int]:
    """`read_segment` over bytes already read (for instance cut at the end the head publishes)."""
    problem = check_segment_header(data)
    if problem is not None:
        if is_last and find_next_valid(data, 0, 0) is None:
            return [], 0, TornTail(path, 0, len(data), problem), 0
        raise LogCorruptionError(path, 0, problem)
    records: list[Record] = []
    offset = SEGMENT_HEADER_SIZE
    last_lsn = 0
    view = memoryview(data)
    data_end = len(data.rstrip(b"\x00"))
    while offset < len(data):
        if offset >= data_end:
            return records, last_lsn, None, offset
        found: tuple[Record, int] | FrameProblem
        if view[offset : offset + FRAME_HEADER_SIZE] == ZERO_FRAME_HEADER:
            found = FrameProblem.HOLE
        else:
            found = decode_at(view, offset)
        if isinstance(found, FrameProblem):
            if is_last and find_next_valid(view[: data_end + SCAN_SLACK], offset + 1, last_lsn) is None:
                return records, last_lsn, TornTail(path, offset, data_end - offset, found.value), offset
            raise LogCorruptionError(path, offset, found.value)
        record, next_offset = found
        if expected_lsn is not None and record.lsn != expected_lsn:
            raise LogCorruptionError(
                path, offset, f"record sequence number {record.lsn}, expected {expected_lsn}"
            )
        expected_lsn = record.lsn + 1
        last_lsn = record.lsn
        if record.lsn > after_lsn:
            records.append(record)
        offset = next_offset
    return records, last_lsn, None, offset


COMPACT_LOCK_NAME = "COMPACT"
APPEND_HEADROOM = 256 * 1024
"""Room a write makes sure of in the open segment before its transaction touches the Doc
(at most an eighth of the segment size), so that on a full disk it fails cleanly instead of
leaving an unlogged change in memory."""


def _allocate(fd: int, offset: int, length: int, need: int, path: Path) -> int:
    """Allocate `length` bytes at `offset` (halving down to `need` on a full disk); return what was had."""
    while True:
        try:
            os.posix_fallocate(fd, offset, length)
            return length
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or length <= need:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFullError(path, need) from exc
                raise
            length = max(need, length // 2)


class CompactionLock:
    """`log/COMPACT`, flock-held by the one process compacting a directory (released on exit or death)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def take(cls, directory: Path, *, wait: bool) -> CompactionLock | None:
        """Take the lock; None when `wait` is False and another process holds it."""
        fd = os.open(directory / COMPACT_LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    def __enter__(self) -> CompactionLock:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)


class SegmentGoneError(StorageError):
    """A segment this process still had to read was deleted by another process's compaction."""

    def __init__(self, directory: Path, lsn: int) -> None:
        super().__init__(f"{directory}: the segment holding record {lsn} was compacted away; reload from the snapshot")
        self.lsn = lsn


@dataclass
class _Cursor:
    """How far this process has read the log: the segment it reads, the offset of the next record, the last lsn."""

    segment: int = 0
    offset: int = 0
    lsn: int = 0
    fd: int | None = None

    def close(self) -> None:
        """Close the segment descriptor, if any."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class OpenLock(Protocol):
    """The directory's open lock, as the log uses it (implemented by DataDir)."""

    def join(self) -> bool:
        """Hold the lock: exclusively, returning True, when no other process has the directory open."""

    def share(self) -> None:
        """Turn an exclusive hold into a shared one."""

    def try_sole(self) -> bool:
        """True (held exclusively) when no other process has the directory open."""


class UpdateLog:
    """Segmented append-only log shared by every process on a directory, with group commit.

    Appends take `log/HEAD`'s append lock, land where the head says the log ends, and
    publish the new end; readers compare the head's last lsn with their own and read the
    records in between (see docs/storage.md, "Many processes, one directory"). The open
    segment is preallocated (posix_fallocate) and written through a shared memory map (PARANOID:
    pwrite), so a record is in the page cache, safe from a process crash, once copied in.
    """

    def __init__(
        self,
        directory: Path,
        durability: Durability = Durability.BALANCED,
        *,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        file_mode: int = 0o600,
    ) -> None:
        self.directory = Path(directory)
        self.durability = Durability.parse(durability)
        self.flush_interval = flush_interval
        self.segment_size = segment_size
        self.file_mode = file_mode
        self._head: LogHead | None = None
        self._open_lock: OpenLock | None = None
        self._sync_cond = threading.Condition()
        self._flusher_wake = threading.Condition()
        self._segment: _OpenSegment | None = None
        self._retired: list[_OpenSegment] = []
        self._append_end = 0
        self._last_segment: int | None = None
        self._prepared = False
        self._cursor = _Cursor()
        self._written_lsn = 0
        self._durable_lsn = 0
        self._syncing = False
        self._flusher_armed = False
        self._closed = False
        self._failure: BaseException | None = None
        self._flusher: threading.Thread | None = None
        self.fsync_count = 0
        self.fsync_observer: Callable[[float], None] | None = None
        """Called with the seconds each group-commit fsync took (metrics); from any thread."""
        self.torn_cut = 0
        self.bytes_since_snapshot = 0
        self.records_since_snapshot = 0
        self._packer = msgpack.Packer(use_bin_type=True)
        self._balanced = self.durability is Durability.BALANCED
        self._write_through = self.durability is Durability.PARANOID

    # -- opening --------------------------------------------------------------------------

    def open(self, after: Callable[[], int], open_lock: OpenLock) -> tuple[list[Record], ReplayReport, int]:
        """Open for reading and appending; return the records after `after()`, the report, and that lsn.

        Under the append lock: `open_lock.join()` says whether any other process has the
        directory open, then `after` loads the snapshot (so no compaction can delete the
        segments that follow it meanwhile). Alone, the log is recovered from its bytes (a
        torn tail is cut and reported) and the head rewritten; otherwise the head is
        trusted and records are read up to the end it publishes.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        head = self._head = LogHead.open(self.directory, self.file_mode)
        self._open_lock = open_lock
        try:
            with head:
                sole = open_lock.join()
                after_lsn = after()
                if sole or not head.valid():
                    records, report = self._recover(after_lsn)
                    if self._last_segment is not None and self._append_end >= SEGMENT_HEADER_SIZE:
                        first, end = self._last_segment, self._append_end
                    else:
                        first, end = report.last_lsn + 1, SEGMENT_HEADER_SIZE
                    head.initialise(first, end, report.last_lsn, report.last_lsn)
                else:
                    records, report = self._read_published(after_lsn)
                last = head.last_lsn
                self._seek_cursor(after_lsn, records)
                self._written_lsn = self._durable_lsn = last
                if sole:
                    open_lock.share()
        except BaseException:
            self._drop_files()
            raise
        self.bytes_since_snapshot = sum(len(r.payload) for r in records)
        self.records_since_snapshot = len(records)
        if self.durability is Durability.BALANCED:
            self._flusher = threading.Thread(target=self._flush_loop, name="agentstate-log-flusher", daemon=True)
            self._flusher.start()
        return records, report, after_lsn

    def _recover(self, after_lsn: int) -> tuple[list[Record], ReplayReport]:
        """Read every record with lsn > after_lsn from the bytes, cutting a torn tail (no other process open).

        A segment that holds no record and starts before the expected lsn is a stray left by
        a writer that died while rolling over (it created the next segment, then died before
        publishing it): it is removed. The last segment kept is fsynced, so everything the
        head will call durable is."""
        report = ReplayReport()
        segments = list_segments(self.directory)
        records: list[Record] = []
        expected: int | None = None
        self._append_end = 0
        self._last_segment = None
        for index, (first_lsn, path) in enumerate(segments):
            is_last = index == len(segments) - 1
            next_first = segments[index + 1][0] if not is_last else None
            if next_first is not None and next_first - 1 <= after_lsn:
                continue
            if expected is None:
                if first_lsn > after_lsn + 1:
                    raise MissingSegmentError(self.directory, after_lsn + 1, first_lsn, path)
                expected = first_lsn
            elif first_lsn != expected:
                if first_lsn < expected and self._is_stray(path):
                    log.warning("log %s: removed a stray segment a writer created before it died", path)
                    path.unlink()
                    continue
                if first_lsn > expected:
                    raise MissingSegmentError(self.directory, expected, first_lsn, path)
                raise LogCorruptionError(path, 0, f"segment starts at {first_lsn}, expected {expected}")
            seg_records, last_lsn, torn, end = read_segment(
                path, is_last=is_last, after_lsn=after_lsn, expected_lsn=expected
            )
            report.segments += 1
            report.bytes_read += end
            records.extend(seg_records)
            if last_lsn:
                expected = last_lsn + 1
                report.last_lsn = last_lsn
            if torn is not None:
                report.torn_tail = torn
                self._truncate(torn)
            if torn is not None and torn.offset < SEGMENT_HEADER_SIZE:
                continue
            self._last_segment, self._append_end = first_lsn, end
        if self._last_segment is not None:
            fd = os.open(self.directory / segment_name(self._last_segment), os.O_RDONLY | os.O_CLOEXEC)
            try:
                _sync_file(fd)
            finally:
                os.close(fd)
        report.records = len(records)
        report.last_lsn = max(report.last_lsn, after_lsn)
        return records, report

    @staticmethod
    def _is_stray(path: Path) -> bool:
        """True for a segment with a valid header and no valid record (an unpublished roll-over)."""
        data = path.read_bytes()
        return check_segment_header(data) is None and isinstance(decode_at(data, SEGMENT_HEADER_SIZE), FrameProblem)

    def _read_published(self, after_lsn: int) -> tuple[list[Record], ReplayReport]:
        """Read the records after `after_lsn` up to the end the head publishes (append lock held)."""
        head = self._head
        assert head is not None
        report = ReplayReport()
        records: list[Record] = []
        expected: int | None = None
        segments = list_segments(self.directory)
        for index, (first_lsn, path) in enumerate(segments):
            if first_lsn > head.segment:
                break
            if index + 1 < len(segments) and segments[index + 1][0] - 1 <= after_lsn:
                continue
            data = path.read_bytes()
            if first_lsn == head.segment:
                data = data[: head.end]
            seg_records, last_lsn, _, end = read_segment_bytes(
                data, path, is_last=False, after_lsn=after_lsn, expected_lsn=expected
            )
            report.segments += 1
            report.bytes_read += end
            if last_lsn:
                expected = last_lsn + 1
            records.extend(seg_records)
        if records and records[0].lsn != after_lsn + 1:
            raise MissingSegmentError(self.directory, after_lsn + 1, records[0].lsn, self.directory)
        reached = records[-1].lsn if records else after_lsn
        if reached < head.last_lsn:
            raise LogCorruptionError(self.directory / segment_name(head.segment), head.end,
                                     f"the head says the log reaches record {head.last_lsn}; it ends at {reached}")
        report.records = len(records)
        report.last_lsn = max(head.last_lsn, after_lsn)
        return records, report

    def _seek_cursor(self, after_lsn: int, records: list[Record]) -> None:
        """Place the read cursor at the head's end (everything up to it is in `records` or the snapshot)."""
        head = self._head
        assert head is not None
        self._cursor.close()
        path = self.directory / segment_name(head.segment)
        try:
            fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = None
        self._cursor = _Cursor(head.segment, head.end, head.last_lsn, fd)

    def _truncate(self, torn: TornTail) -> None:
        """Cut a torn tail off (zeroing it) so that new records follow the last good one."""
        log.warning(
            "log %s: dropped a torn tail of %d bytes at offset %d (%s)",
            torn.path, torn.dropped_bytes, torn.offset, torn.reason,
        )
        if torn.offset < SEGMENT_HEADER_SIZE:
            torn.path.unlink()
            fsync_directory(self.directory)
            return
        fd = os.open(torn.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, torn.offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _start_segment(self, first_lsn: int, need: int) -> None:
        """Create the segment whose first record will be `first_lsn`, durably in every mode (it is shared:
        another process's PARANOID records will go into it)."""
        path = self.directory / segment_name(first_lsn)
        minimum = need + SEGMENT_HEADER_SIZE + FRAME_HEADER_SIZE
        self._segment = _OpenSegment.create(path, max(self.segment_size, minimum), need=minimum, sync=True,
                                            write_through=self._write_through, mode=self.file_mode,
                                            first=first_lsn)
        fsync_directory(self.directory)

    def _follow_head(self) -> None:
        """Point this process's write handle at the head's segment and end, creating it if it is new."""
        head = self._head
        assert head is not None
        if self._segment is not None and os.fstat(self._segment.fd).st_size < self._segment.capacity:
            self._close_segment(self._segment)
            self._segment = None
        if self._segment is None or self._segment_first != head.segment:
            if self._segment is not None:
                self._close_segment(self._segment)
                self._segment = None
            path = self.directory / segment_name(head.segment)
            try:
                self._segment = _OpenSegment.open(path, head.end, write_through=self._write_through,
                                                  first=head.segment)
            except FileNotFoundError:
                if head.end != SEGMENT_HEADER_SIZE:
                    raise MissingSegmentError(self.directory, head.segment, head.segment, path) from None
                self._start_segment(head.segment, 0)
        self._segment.end = head.end

    def prepare_append(self, headroom: int | None = None) -> None:
        """Make sure of room for the next record before a write touches the Doc (append lock held).

        Follows the head, cuts a dead writer's torn record, and reserves space (extending
        the segment, or sealing it and starting the next). DiskFullError when the disk has
        no room: the write is refused before anything changed."""
        if headroom is None:
            headroom = min(APPEND_HEADROOM, self.segment_size // 8)
        head = self.lock()
        with head:
            if self._failure is not None:
                raise StorageError(f"the update log failed earlier: {self._failure}") from self._failure
            self._follow_head()
            segment = self._segment
            assert segment is not None
            self._cut_torn(segment)
            self._prepared = True
            if segment.capacity - segment.end >= headroom + FRAME_HEADER_SIZE:
                return
            need = headroom + FRAME_HEADER_SIZE
            if segment.end + need <= self.segment_size or segment.end <= SEGMENT_HEADER_SIZE:
                segment.reserve(max(self.segment_size, segment.end + need), need)
                return
            at_end = self._cursor.lsn == head.last_lsn
            self._roll(headroom)
            if at_end:
                self._cursor_to_segment(self._segment_first)
                self._cursor.lsn = head.last_lsn

    @property
    def _segment_first(self) -> int:
        """The first lsn of the segment this process appends to (the name of the open segment)."""
        assert self._segment is not None
        return self._segment.first

    def _close_segment(self, segment: _OpenSegment) -> None:
        with self._sync_cond:
            if self._syncing:
                self._retired.append(segment)
            else:
                segment.close(truncate=False)

    # -- the append lock and reading what others wrote --------------------------------------

    def lock(self) -> LogHead:
        """The append lock (a reentrant context manager across threads and processes)."""
        if self._head is None:
            raise ClosedError("the update log is closed")
        return self._head

    @property
    def read_position(self) -> int:
        """The lsn of the last record this process has read (or written)."""
        return self._cursor.lsn

    def changed(self) -> bool:
        """True when another process published records this one has not read (one word compared)."""
        head = self._head
        return head is not None and head.last_lsn != self._cursor.lsn

    def read_new(self) -> list[Record]:
        """Records other processes appended since this one last looked (append lock held).

        Raises SegmentGoneError when a segment still to be read was compacted away: the
        caller reloads from the newest snapshot and calls `seek_after`."""
        head = self._head
        assert head is not None and head.held
        cursor = self._cursor
        target = head.last_lsn
        records: list[Record] = []
        while cursor.lsn < target:
            if cursor.fd is None:
                try:
                    cursor.fd = os.open(self.directory / segment_name(cursor.segment), os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise SegmentGoneError(self.directory, cursor.lsn + 1) from None
            current = cursor.segment == head.segment
            stop = head.end if current else os.fstat(cursor.fd).st_size
            data = os.pread(cursor.fd, max(0, stop - cursor.offset), cursor.offset)
            offset, before = 0, cursor.lsn
            while offset < len(data) and cursor.lsn < target:
                if data[offset : offset + FRAME_HEADER_SIZE] == ZERO_FRAME_HEADER:
                    break
                found = decode_at(data, offset)
                path = self.directory / segment_name(cursor.segment)
                if isinstance(found, FrameProblem):
                    raise LogCorruptionError(path, cursor.offset + offset, found.value)
                record, next_offset = found
                if record.lsn != cursor.lsn + 1:
                    raise LogCorruptionError(path, cursor.offset + offset,
                                             f"record sequence number {record.lsn}, expected {cursor.lsn + 1}")
                cursor.lsn = record.lsn
                records.append(record)
                offset = next_offset
            cursor.offset += offset
            if cursor.lsn < target:
                if current:
                    raise LogCorruptionError(self.directory / segment_name(cursor.segment), cursor.offset,
                                             f"the head says the log reaches record {target}, it ends at {cursor.lsn}")
                if cursor.lsn == before and offset == 0 and data[:FRAME_HEADER_SIZE] not in (b"", ZERO_FRAME_HEADER):
                    raise LogCorruptionError(self.directory / segment_name(cursor.segment), cursor.offset,
                                             "no record where one was expected")
                self._cursor_to_segment(cursor.lsn + 1)
        self.bytes_since_snapshot += sum(len(r.payload) for r in records)
        self.records_since_snapshot += len(records)
        return records

    def _cursor_to_segment(self, first_lsn: int) -> None:
        cursor = self._cursor
        cursor.close()
        try:
            cursor.fd = os.open(self.directory / segment_name(first_lsn), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SegmentGoneError(self.directory, first_lsn) from None
        cursor.segment = first_lsn
        cursor.offset = SEGMENT_HEADER_SIZE

    def seek_after(self, lsn: int) -> None:
        """Continue reading after record `lsn` (a snapshot covering it was applied; append lock held)."""
        head = self._head
        assert head is not None and head.held
        candidates = [first for first, _ in list_segments(self.directory) if first <= lsn + 1]
        if not candidates:
            raise MissingSegmentError(self.directory, lsn + 1, head.segment, self.directory)
        self._cursor_to_segment(candidates[-1])
        cursor = self._cursor
        cursor.lsn = candidates[-1] - 1
        assert cursor.fd is not None
        stop = head.end if cursor.segment == head.segment else os.fstat(cursor.fd).st_size
        data = os.pread(cursor.fd, max(0, stop - cursor.offset), cursor.offset)
        offset = 0
        while offset < len(data) and cursor.lsn < lsn:
            found = decode_at(data, offset)
            if isinstance(found, FrameProblem):
                raise LogCorruptionError(self.directory / segment_name(cursor.segment), cursor.offset + offset,
                                         found.value)
            record, offset = found
            cursor.lsn = record.lsn
        cursor.offset += offset

    # -- appending ------------------------------------------------------------------------

    @property
    def last_lsn(self) -> int:
        """Sequence number of the newest record this process wrote or read."""
        return max(self._written_lsn, self._cursor.lsn)

    @property
    def durable_lsn(self) -> int:
        """Every record up to this sequence number has been fsynced (by this or another process)."""
        head = self._head
        shared = head.durable_lsn if head is not None and not self._closed else 0
        return max(self._durable_lsn, shared)

    def append(self, payload: bytes, kind: int = KIND_UPDATE) -> int:
        """Append one record and return its lsn; in PARANOID mode it is on disk on return."""
        lsn = self.append_nowait(payload, kind)
        if self.durability is Durability.PARANOID:
            self.sync(lsn)
        return lsn

    def append_nowait(self, payload: bytes, kind: int = KIND_UPDATE) -> int:
        """Append one record where the head says the log ends, without waiting for the disk."""
        head = self._head
        if self._closed or head is None:
            raise ClosedError("the update log is closed")
        with head:
            if self._failure is not None:
                raise StorageError(f"the update log failed earlier: {self._failure}") from self._failure
            prepared, self._prepared = self._prepared, False
            lsn = head.last_lsn + 1
            frame = encode_record(lsn, kind, payload, self._packer)
            size = len(frame)
            at_end = self._cursor.lsn == lsn - 1
            segment = self._segment
            try:
                if not prepared:
                    self._follow_head()
                    segment = self._segment
                    assert segment is not None
                    self._cut_torn(segment)
                assert segment is not None
                end = segment.end + size
                if end + FRAME_HEADER_SIZE > segment.capacity:
                    if end + FRAME_HEADER_SIZE <= self.segment_size or segment.end <= SEGMENT_HEADER_SIZE:
                        segment.reserve(max(self.segment_size, end + FRAME_HEADER_SIZE), size + FRAME_HEADER_SIZE)
                    else:
                        self._roll(size)
                        segment = self._segment
                        assert segment is not None
                        end = segment.end + size
                mm = segment.mm
                if mm is not None and end < segment.release_at:
                    mm[segment.end : end] = frame
                    segment.end = end
                else:
                    segment.write(frame)
            except DiskFullError:
                raise
            except (OSError, ValueError) as exc:
                self._failure = exc
                raise StorageError(f"cannot append to {segment.path if segment else self.directory}: {exc}") from exc
            head.publish(segment.first, segment.end, lsn)
            if at_end:
                cursor = self._cursor
                if cursor.segment != segment.first:
                    self._cursor_to_segment(segment.first)
                cursor.offset = segment.end
                cursor.lsn = lsn
            self._written_lsn = lsn
            self.bytes_since_snapshot += len(payload)
            self.records_since_snapshot += 1
            if self._balanced and not self._flusher_armed:
                self._flusher_armed = True
                with self._flusher_wake:
                    self._flusher_wake.notify_all()
            return lsn

    def _cut_torn(self, segment: _OpenSegment) -> None:
        """Zero the header of a record a dead writer left unpublished at the end, and report it.

        Read through this process's map when it covers the spot (no system call: `_follow_head`
        has just checked the file is not shorter than the map), else from the file (another
        process may have extended it past this one's map)."""
        mm, at = segment.mm, segment.end
        if mm is not None and at + FRAME_HEADER_SIZE <= len(mm):
            tail = mm[at : at + FRAME_HEADER_SIZE]
        else:
            tail = os.pread(segment.fd, FRAME_HEADER_SIZE, at)
        if not tail.strip(b"\x00"):
            return
        assert self._head is not None
        length = int.from_bytes(tail[:4], "little")
        size = os.fstat(segment.fd).st_size
        span = max(len(tail), min(FRAME_HEADER_SIZE + length, size - segment.end, RELEASE_CHUNK))
        log.warning("log %s: cut off a record of %d bytes at offset %d left by a writer that died mid-append",
                    segment.path, length, segment.end)
        os.pwrite(segment.fd, bytes(span), segment.end)
        self._head.note_torn()
        self.torn_cut += 1

    def _roll(self, need: int = 0) -> None:
        """Seal the current segment and start the next (append lock held).

        Order matters to the other processes: the old segment is fsynced first (in every
        mode, so a record in a sealed segment is durable for everyone and the head says so),
        then the next segment is created and published, and only then is the old one trimmed
        to its last record (a process that still maps it follows the head first, so it never
        writes past the new end). A failure before publishing leaves the log as it was; a
        writer dying after creating the next segment leaves a stray the next roll removes."""
        old = self._segment
        head = self._head
        assert old is not None and head is not None
        old_end = old.end
        old.sync()
        self.fsync_count += 1
        head.note_durable(head.last_lsn)
        with self._sync_cond:
            self._durable_lsn = max(self._durable_lsn, head.last_lsn)
            self._sync_cond.notify_all()
        next_first = head.last_lsn + 1
        assert next_first != head.segment, "an empty segment is extended, never rolled"
        for first, path in list_segments(self.directory):
            if first > head.segment and first != next_first:
                path.unlink(missing_ok=True)
        self._segment = None
        try:
            self._start_segment(next_first, need)
        except BaseException:
            self._segment = old
            raise
        assert self._segment is not None
        head.publish(self._segment_first, self._segment.end, head.last_lsn)
        old.trim(old_end)
        self._close_segment(old)

    def roll(self) -> None:
        """Start a new segment now, so that everything written so far lies in older ones."""
        head = self.lock()
        with head:
            self._follow_head()
            assert self._segment is not None
            if self._segment.end > SEGMENT_HEADER_SIZE:
                self._cut_torn(self._segment)
                at_end = self._cursor.lsn == head.last_lsn
                self._roll()
                if at_end:
                    self._cursor_to_segment(self._segment_first)
                    self._cursor.lsn = head.last_lsn

    def sync(self, lsn: int | None = None) -> None:
        """Block until every record up to `lsn` (default: all this process knows of) is on disk.

        One thread of a process fsyncs at a time and the others wait for it (group
        commit); a record another process's fsync already covered needs none. It never
        takes the append lock (a caller may hold it): the head's position is read lock-free,
        and a record in an older segment was fsynced when that segment was sealed."""
        target = self.last_lsn if lsn is None else lsn
        with self._sync_cond:
            while self.durable_lsn < target:
                if self._failure is not None:
                    raise StorageError(f"the update log failed: {self._failure}") from self._failure
                if self._syncing:
                    self._sync_cond.wait()
                    continue
                self._syncing = True
                break
            else:
                return
        where: Path = self.directory
        try:
            head = self.lock()
            upto, segment_first, _ = head.position()
            if upto > self._durable_lsn:
                segment = self._segment
                own = segment.fd if segment is not None and segment.first == segment_first else -1
                if own >= 0:
                    assert segment is not None
                    where = segment.path
                    self._sync_descriptor(own)
                else:
                    where = self.directory / segment_name(segment_first)
                    try:
                        fd = os.open(where, os.O_RDONLY | os.O_CLOEXEC)
                    except FileNotFoundError:
                        fd = None
                    if fd is not None:
                        try:
                            self._sync_descriptor(fd)
                        finally:
                            os.close(fd)
            head.note_durable(upto)
        except (OSError, ValueError) as exc:
            self._end_sync(0, exc)
            raise StorageError(f"fsync of {where} failed: {exc}") from exc
        except BaseException:
            self._end_sync(0, None)
            raise
        self._end_sync(upto, None)

    def _sync_descriptor(self, fd: int) -> None:
        """fdatasync `fd`, counted and timed for the observer."""
        started = time.perf_counter()
        _sync_file(fd)
        self.fsync_count += 1
        observer = self.fsync_observer
        if observer is not None:
            observer(time.perf_counter() - started)

    def _end_sync(self, upto: int, failure: BaseException | None) -> None:
        """Let the next syncing thread go: note what is durable (or the failure), close what was retired.

        A sync may be using the open segment's descriptor, so a roll or a close meanwhile
        retires that segment (`_close_segment`) and the sync closes it here, when done with it."""
        with self._sync_cond:
            self._durable_lsn = max(self._durable_lsn, upto)
            if failure is not None:
                self._failure = failure
            self._syncing = False
            self._close_retired()
            self._sync_cond.notify_all()

    def _close_retired(self) -> None:
        """Close the segments set aside while an fsync was running (`_sync_cond` held, no fsync running)."""
        for retired in self._retired:
            retired.close(truncate=False)
        self._retired.clear()

    def _flush_loop(self) -> None:
        """BALANCED mode: fsync within `flush_interval` of the first unsynced write.

        Armed by the first write after an idle spell, it wakes every half interval while
        writes keep coming (not once per write: a woken thread competes for the GIL with the
        writer) and disarms after a half interval with no new write and nothing unsynced. It
        waits on a condition of its own, so the group commits of `sync` do not wake it."""
        delay = self.flush_interval / 2
        wake = self._flusher_wake
        while True:
            with wake:
                while not self._closed and not self._flusher_armed:
                    wake.wait()
                if self._closed:
                    return
                seen = self._written_lsn
                wake.wait_for(lambda: self._closed, timeout=delay)
                if self._closed:
                    return
            if self._written_lsn == seen and self.durable_lsn >= seen:
                self._flusher_armed = False
                if self._written_lsn == seen:
                    continue
                self._flusher_armed = True
            try:
                self.sync()
            except Exception as exc:
                log.error("background fsync failed: %s", exc)
                return

    def delete_segments_through(self, lsn: int) -> list[Path]:
        """Delete sealed segments whose every record has lsn <= `lsn` (append lock taken).

        A process still reading one keeps its descriptor (the file lives on until closed);
        one that had not opened it yet reloads from the snapshot (SegmentGoneError)."""
        head = self.lock()
        removed: list[Path] = []
        with head:
            segments = list_segments(self.directory)
            for index, (first, path) in enumerate(segments[:-1]):
                next_first = segments[index + 1][0]
                if next_first - 1 <= lsn and first != head.segment:
                    path.unlink(missing_ok=True)
                    removed.append(path)
        if removed:
            fsync_directory(self.directory)
        return removed

    def close(self) -> None:
        """Flush everything to disk, stop the flusher, and close; the last process trims the segment."""
        if self._closed:
            return
        if self._segment is not None and self._failure is None and self._head is not None:
            try:
                self.sync()
            except Exception as exc:
                log.error("final fsync failed: %s", exc)
        head = self._head
        try:
            if head is not None and self._failure is None:
                with head:
                    if self._open_lock is not None and self._open_lock.try_sole():
                        try:
                            path = self.directory / segment_name(head.segment)
                            if head.valid() and path.exists() and path.stat().st_size > head.end:
                                os.truncate(path, head.end)
                        finally:
                            self._open_lock.share()
        except OSError as exc:
            log.warning("could not trim the log segment at close: %s", exc)
        with self._sync_cond:
            self._closed = True
            self._sync_cond.notify_all()
        with self._flusher_wake:
            self._flusher_wake.notify_all()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(timeout=5)
        self._drop_files()

    def _drop_files(self) -> None:
        """Close every descriptor and map this log holds (no I/O beyond close); a segment an fsync in
        flight is using is retired instead, and that fsync closes it when it ends."""
        with self._sync_cond:
            if not self._syncing:
                self._close_retired()
        if self._segment is not None:
            self._close_segment(self._segment)
            self._segment = None
        self._cursor.close()
        if self._head is not None:
            self._head.close()
            self._head = None


class _OpenSegment:
    """The segment being appended to: a preallocated (allocated, not sparse) file, mapped shared into memory.

    With `write_through` (PARANOID) there is no map: each frame is written with pwrite,
    since every record is fsynced at once anyway, and a mapped page would take a fault
    on the first write after each fsync. The file is preallocated either way, so an
    fsync never has to change its size.
    """

    def __init__(self, path: Path, fd: int, mm: mmap.mmap | None, end: int, capacity: int,
                 write_through: bool, first: int) -> None:
        self.path = path
        self.first = first
        """The lsn of its first record (its name says it too)."""
        self.fd = fd
        """-1 once closed: a sync that finds it so opens the file by name instead."""
        self.mm = mm
        self._write_through = write_through
        self.end = end
        self.capacity = capacity
        self._released = (end // RELEASE_CHUNK) * RELEASE_CHUNK
        self.release_at = self._released + 2 * RELEASE_CHUNK

    @classmethod
    def create(cls, path: Path, capacity: int, *, need: int, sync: bool, write_through: bool = False,
               mode: int = 0o600, first: int) -> _OpenSegment:
        """A new segment holding just its header, its space reserved (fsynced unless `sync` is False).

        The space is allocated (`posix_fallocate`), not left sparse: a write into a hole of a
        mapped file on a full disk kills the process with SIGBUS. When `capacity` cannot be
        had, less is tried, down to `need`; DiskFullError when not even that fits."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            header = encode_segment_header()
            size = _allocate(fd, 0, capacity, max(need, len(header) + FRAME_HEADER_SIZE), path)
            os.pwrite(fd, header, 0)
            if sync:
                _sync_file(fd)
            mm = None if write_through else mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return cls(path, fd, mm, len(header), size, write_through, first)

    @classmethod
    def open(cls, path: Path, end: int, *, write_through: bool = False, first: int) -> _OpenSegment:
        """Reopen an existing segment whose published records end at `end`, at its current size."""
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            mm = None if write_through or size == 0 else mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, mm, end, size, write_through, first)

    def reserve(self, capacity: int, need: int) -> None:
        """Allocate room for appends up to `capacity` (at least `need` bytes past the end), remapping.

        DiskFullError when not even `need` bytes can be had; the segment is unchanged then."""
        if self.capacity >= capacity:
            return
        size = _allocate(self.fd, self.end, capacity - self.end, need, self.path) + self.end
        if self.mm is not None or size > 0:
            if self.mm is not None:
                self.mm.close()
                self.mm = None
            self.mm = None if self._write_through else mmap.mmap(self.fd, size)
        self.capacity = size
        self._released = (self.end // RELEASE_CHUNK) * RELEASE_CHUNK
        self.release_at = self._released + 2 * RELEASE_CHUNK

    def write(self, frame: bytes) -> None:
        """Copy a frame in; it is in the page cache (safe from a process crash) on return."""
        end = self.end + len(frame)
        if self.mm is None:
            written = os.pwrite(self.fd, frame, self.end)
            if written != len(frame):
                raise OSError(f"short write: {written} of {len(frame)} bytes")
        else:
            self.mm[self.end : end] = frame
            if end >= self.release_at:
                self._release(end)
        self.end = end

    def trim(self, end: int) -> None:
        """Cut the file at `end` (sealing it, or tidying the preallocated zeros at the last close)."""
        os.ftruncate(self.fd, end)
        self.capacity = min(self.capacity, end)

    def _release(self, end: int) -> None:
        """Unmap written pages from this process (they stay in the page cache) to bound RSS."""
        assert self.mm is not None
        upto = ((end - RELEASE_CHUNK) // mmap.PAGESIZE) * mmap.PAGESIZE
        if upto > self._released and hasattr(self.mm, "madvise"):
            self.mm.madvise(mmap.MADV_DONTNEED, self._released, upto - self._released)
            self._released = upto
        self.release_at = self._released + 2 * RELEASE_CHUNK

    def sync(self) -> None:
        """Write the segment's dirty pages to disk.

        fdatasync on the file flushes pages dirtied through the shared map too (Linux), and
        unlike mmap.flush it releases the GIL, so other threads keep appending meanwhile.
        """
        _sync_file(self.fd)

    def close(self, *, truncate: bool) -> None:
        """Unmap and close; `truncate` trims the preallocated zeros after the last record."""
        if self.mm is not None:
            self.mm.close()
        try:
            if truncate:
                os.ftruncate(self.fd, self.end)
        finally:
            fd, self.fd = self.fd, -1
            os.close(fd)
