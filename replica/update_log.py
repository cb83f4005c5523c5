"""UpdateLog: the append-only, CRC-framed, segmented log of every Doc update.

Appends go to the OS with one write each; when they reach the disk depends on the
durability mode. Concurrent callers of `sync` share one fsync (group commit).
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from .durability import Durability
from .errors import ClosedError, LogCorruptionError, MissingSegmentError, StorageError
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
    data = path.read_bytes()
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


class UpdateLog:
    """Segmented append-only log with PARANOID / BALANCED / LAZY durability and group commit.

    The open segment is preallocated (sparse) and written through a shared memory map:
    a record is in the OS page cache, hence safe from a process crash, as soon as it is
    copied in, without a system call per record. fsync (msync) makes it safe from a power cut.
    """

    def __init__(
        self,
        directory: Path,
        durability: Durability = Durability.BALANCED,
        *,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
    ) -> None:
        self.directory = Path(directory)
        self.durability = Durability.parse(durability)
        self.flush_interval = flush_interval
        self.segment_size = segment_size
        self._write_lock = threading.Lock()
        self._sync_cond = threading.Condition()
        self._segment: _OpenSegment | None = None
        self._retired: list[_OpenSegment] = []
        self._append_end = 0
        self._next_lsn = 1
        self._written_lsn = 0
        self._durable_lsn = 0
        self._syncing = False
        self._flusher_armed = False
        self._closed = False
        self._failure: BaseException | None = None
        self._flusher: threading.Thread | None = None
        self.fsync_count = 0
        self.bytes_since_snapshot = 0
        self.records_since_snapshot = 0
        self._packer = msgpack.Packer(use_bin_type=True)
        self._balanced = self.durability is Durability.BALANCED
        self._write_through = self.durability is Durability.PARANOID

    def replay(self, after_lsn: int = 0) -> tuple[Iterator[Record], ReplayReport]:
        """Read every record with lsn > after_lsn, checking sequence continuity across segments.

        Returns the records and a report; a torn tail is cut off and reported. Call once,
        before `open_for_append`.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        report = ReplayReport()
        segments = list_segments(self.directory)
        records: list[Record] = []
        expected: int | None = None
        self._append_end = 0
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
            if is_last:
                self._append_end = end if torn is None or torn.offset >= SEGMENT_HEADER_SIZE else 0
        report.records = len(records)
        self._next_lsn = max(report.last_lsn, after_lsn) + 1
        self._written_lsn = self._durable_lsn = self._next_lsn - 1
        self.bytes_since_snapshot = sum(len(r.payload) for r in records)
        self.records_since_snapshot = len(records)
        return iter(records), report

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

    def open_for_append(self) -> None:
        """Map the newest segment (or start one) for appending, and start the flusher."""
        segments = list_segments(self.directory)
        if segments and self._append_end >= SEGMENT_HEADER_SIZE:
            self._segment = _OpenSegment.open(segments[-1][1], self._append_end, self.segment_size,
                                              write_through=self._write_through)
        else:
            self._start_segment(0)
        if self.durability is Durability.BALANCED:
            self._flusher = threading.Thread(target=self._flush_loop, name="agentstate-log-flusher", daemon=True)
            self._flusher.start()

    def _start_segment(self, need: int) -> None:
        """Create the segment that the next record opens, durably unless LAZY."""
        path = self.directory / segment_name(self._next_lsn)
        capacity = max(self.segment_size, need + SEGMENT_HEADER_SIZE + FRAME_HEADER_SIZE)
        self._segment = _OpenSegment.create(path, capacity, sync=self.durability is not Durability.LAZY,
                                            write_through=self._write_through)
        if self.durability is not Durability.LAZY:
            fsync_directory(self.directory)

    @property
    def last_lsn(self) -> int:
        """Sequence number of the newest record written."""
        return self._written_lsn

    @property
    def durable_lsn(self) -> int:
        """Every record up to this sequence number has been fsynced."""
        return self._durable_lsn

    def append(self, payload: bytes, kind: int = KIND_UPDATE) -> int:
        """Append one record and return its lsn; in PARANOID mode it is on disk on return."""
        lsn = self.append_nowait(payload, kind)
        if self.durability is Durability.PARANOID:
            self.sync(lsn)
        return lsn

    def append_nowait(self, payload: bytes, kind: int = KIND_UPDATE) -> int:
        """Append one record to the OS without waiting for the disk, whatever the mode."""
        with self._write_lock:
            segment = self._segment
            if self._closed or segment is None:
                raise ClosedError("the update log is closed")
            if self._failure is not None:
                raise StorageError(f"the update log failed earlier: {self._failure}") from self._failure
            lsn = self._next_lsn
            frame = encode_record(lsn, kind, payload, self._packer)
            size = len(frame)
            try:
                end = segment.end + size
                if end + FRAME_HEADER_SIZE > segment.capacity:
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
            except (OSError, ValueError) as exc:
                self._failure = exc
                raise StorageError(f"cannot append to {segment.path}: {exc}") from exc
            self._next_lsn = lsn + 1
            self._written_lsn = lsn
            self.bytes_since_snapshot += len(payload)
            self.records_since_snapshot += 1
            if self._balanced and not self._flusher_armed:
                self._flusher_armed = True
                with self._sync_cond:
                    self._sync_cond.notify_all()
            return lsn

    def _roll(self, need: int = 0) -> None:
        """Finish the current segment (durably unless LAZY) and start the next. Holds the write lock."""
        old = self._segment
        assert old is not None
        if self.durability is not Durability.LAZY:
            old.sync()
            self.fsync_count += 1
            with self._sync_cond:
                self._durable_lsn = max(self._durable_lsn, self._written_lsn)
                self._sync_cond.notify_all()
        with self._sync_cond:
            if self._syncing:
                self._retired.append(old)
            else:
                old.close(truncate=True)
        self._start_segment(need)

    def roll(self) -> None:
        """Start a new segment now, so that everything written so far lies in older ones."""
        with self._write_lock:
            if self._segment is not None and self._segment.end > SEGMENT_HEADER_SIZE:
                self._roll()

    def sync(self, lsn: int | None = None) -> None:
        """Block until every record up to `lsn` (default: all written) is on disk.

        One caller at a time fsyncs; the others wait for it, and one fsync covers every
        record written before it started (group commit).
        """
        target = self._written_lsn if lsn is None else lsn
        with self._sync_cond:
            while self._durable_lsn < target:
                if self._failure is not None:
                    raise StorageError(f"the update log failed: {self._failure}") from self._failure
                if self._syncing:
                    self._sync_cond.wait()
                    continue
                self._syncing = True
                break
            else:
                return
        try:
            with self._write_lock:
                segment = self._segment
                upto = self._written_lsn
                self._flusher_armed = False
            if segment is None:
                raise ClosedError("the update log is closed")
            segment.sync()
            self.fsync_count += 1
        except (OSError, ValueError) as exc:
            with self._sync_cond:
                self._failure = exc
                self._syncing = False
                self._sync_cond.notify_all()
            raise StorageError(f"fsync of {segment.path if segment else self.directory} failed: {exc}") from exc
        except BaseException:
            with self._sync_cond:
                self._syncing = False
                self._sync_cond.notify_all()
            raise
        with self._sync_cond:
            self._durable_lsn = max(self._durable_lsn, upto)
            self._syncing = False
            for retired in self._retired:
                retired.close(truncate=True)
            self._retired.clear()
            self._sync_cond.notify_all()

    def _flush_loop(self) -> None:
        """BALANCED mode: fsync within `flush_interval` of the first unsynced write."""
        delay = self.flush_interval / 2
        while True:
            with self._sync_cond:
                while not self._closed and not self._flusher_armed:
                    self._sync_cond.wait()
                if self._closed:
                    return
                self._sync_cond.wait_for(lambda: self._closed, timeout=delay)
                if self._closed:
                    return
            try:
                self.sync()
            except Exception as exc:
                log.error("background fsync failed: %s", exc)
                return

    def delete_segments_through(self, lsn: int) -> list[Path]:
        """Delete segments whose every record has lsn <= `lsn` (never the open one)."""
        segments = list_segments(self.directory)
        current = self._segment.path if self._segment is not None else None
        removed: list[Path] = []
        for index, (_, path) in enumerate(segments[:-1]):
            next_first = segments[index + 1][0]
            if next_first - 1 <= lsn and path != current:
                path.unlink()
                removed.append(path)
        if removed:
            fsync_directory(self.directory)
        return removed

    def close(self) -> None:
        """Flush everything to disk, stop the flusher, trim and close the segment."""
        if self._closed:
            return
        if self._segment is not None and self._failure is None:
            try:
                self.sync()
            except Exception as exc:
                log.error("final fsync failed: %s", exc)
        with self._write_lock:
            with self._sync_cond:
                self._closed = True
                self._sync_cond.notify_all()
            if self._segment is not None:
                self._segment.close(truncate=self._failure is None)
                self._segment = None
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(timeout=5)
        with self._sync_cond:
            for retired in self._retired:
                retired.close(truncate=True)
            self._retired.clear()


class _OpenSegment:
    """The segment being appended to: a preallocated sparse file, mapped shared into memory.

    With `write_through` (PARANOID) there is no map: each frame is written with pwrite,
    since every record is fsynced at once anyway, and a mapped page would take a fault
    on the first write after each fsync. The file is preallocated either way, so an
    fsync never has to change its size.
    """

    def __init__(self, path: Path, fd: int, mm: mmap.mmap | None, end: int, capacity: int) -> None:
        self.path = path
        self.fd = fd
        self.mm = mm
        self.end = end
        self.capacity = capacity
        self._released = (end // RELEASE_CHUNK) * RELEASE_CHUNK
        self.release_at = self._released + 2 * RELEASE_CHUNK

    @classmethod
    def create(cls, path: Path, capacity: int, *, sync: bool, write_through: bool = False) -> _OpenSegment:
        """A new segment holding just its header; the header is fsynced unless `sync` is False."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            header = encode_segment_header()
            os.write(fd, header)
            os.ftruncate(fd, capacity)
            if sync:
                _sync_file(fd)
            mm = None if write_through else mmap.mmap(fd, capacity)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, mm, len(header), capacity)

    @classmethod
    def open(cls, path: Path, end: int, capacity: int, *, write_through: bool = False) -> _OpenSegment:
        """Reopen an existing segment whose valid records end at `end`."""
        fd = os.open(path, os.O_RDWR)
        try:
            size = max(capacity, os.fstat(fd).st_size, end + FRAME_HEADER_SIZE)
            os.ftruncate(fd, size)
            mm = None if write_through else mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, mm, end, size)

    def fits(self, length: int) -> bool:
        """True if a frame of `length` bytes fits, leaving room for the zero end marker."""
        return self.end + length + FRAME_HEADER_SIZE <= self.capacity

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
            os.close(self.fd)
