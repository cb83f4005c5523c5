"""Verify and repair a data directory: check every byte, salvage every readable record.

Repair never deletes: damaged files move to `damaged-<time>/` inside the directory, and
the salvaged state becomes a fresh snapshot with an empty log. Peers hold copies of
whatever was lost; syncing with them afterwards brings it back.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pycrdt import Doc, merge_updates

from .datadir import DataDir
from .errors import ReplicaError
from .frames import (
    FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    ZERO_FRAME_HEADER,
    FrameProblem,
    Record,
    check_segment_header,
    decode_at,
    find_next_valid,
)
from .snapshot import SnapshotProblem, SnapshotStore, decode_snapshot
from .update_log import fsync_directory, list_segments


@dataclass
class Damage:
    """A stretch of a file that could not be read, and why."""

    path: Path
    offset: int
    length: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path.name}: {self.length} bytes at offset {self.offset} ({self.reason})"


@dataclass
class ScanResult:
    """Everything readable in a directory's snapshots and log, and everything that was not."""

    records: list[Record] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)
    snapshot_problems: list[SnapshotProblem] = field(default_factory=list)
    snapshot_lsn: int = 0
    snapshot_state: bytes | None = None
    gaps: list[tuple[int, int]] = field(default_factory=list)
    segments: int = 0

    @property
    def clean(self) -> bool:
        """True if nothing at all is damaged or missing."""
        return not (self.damage or self.snapshot_problems or self.gaps)

    def problems(self) -> list[str]:
        """One line per problem found."""
        lines = [str(d) for d in self.damage]
        lines += [f"{p.path.name}: {p.reason}" for p in self.snapshot_problems]
        lines += [f"log records {a}..{b} are missing" for a, b in self.gaps]
        return lines


def salvage_segment(path: Path, limit: int | None = None) -> tuple[list[Record], list[Damage]]:
    """Every valid record of one segment (its first `limit` bytes), resynchronising after damage, plus the damage."""
    data = path.read_bytes()
    if limit is not None:
        data = data[:limit]
    records: list[Record] = []
    damage: list[Damage] = []
    data_end = len(data.rstrip(b"\x00"))
    view = memoryview(data)
    problem = check_segment_header(data)
    offset = SEGMENT_HEADER_SIZE
    if problem is not None:
        resume = find_next_valid(view[:data_end + 4096], 0, 0)
        damage.append(Damage(path, 0, (resume if resume is not None else data_end), problem))
        if resume is None:
            return records, damage
        offset = resume
    last_lsn = 0
    while offset < data_end:
        found: tuple[Record, int] | FrameProblem
        if view[offset : offset + FRAME_HEADER_SIZE] == ZERO_FRAME_HEADER:
            found = FrameProblem.HOLE
        else:
            found = decode_at(view, offset)
        if isinstance(found, FrameProblem):
            resume = find_next_valid(view[: data_end + 4096], offset + 1, last_lsn)
            stop = resume if resume is not None else data_end
            damage.append(Damage(path, offset, stop - offset, found.value))
            if resume is None:
                break
            offset = resume
            continue
        record, offset = found
        records.append(record)
        last_lsn = record.lsn
    return records, damage


def scan(datadir: DataDir, end: tuple[int, int] | None = None) -> ScanResult:
    """Read every snapshot and segment without changing anything.

    `end` (segment, offset), from the log head of a directory in use, bounds the scan to
    what was published when it began: later appends, and a record being written, are not
    read (and so are never mistaken for damage)."""
    result = ScanResult()
    store = SnapshotStore(datadir.snapshot_dir)
    for lsn, path in reversed(store.paths()):
        found = decode_snapshot(path.read_bytes(), path)
        if isinstance(found, SnapshotProblem):
            result.snapshot_problems.append(found)
        elif result.snapshot_state is None and found.lsn == lsn:
            result.snapshot_state, result.snapshot_lsn = found.state, found.lsn
    by_lsn: dict[int, Record] = {}
    for first, path in list_segments(datadir.log_dir):
        if end is not None and first > end[0]:
            break
        result.segments += 1
        try:
            records, damage = salvage_segment(path, end[1] if end is not None and first == end[0] else None)
        except FileNotFoundError:
            continue
        result.damage += damage
        for record in records:
            by_lsn.setdefault(record.lsn, record)
    result.records = [by_lsn[k] for k in sorted(by_lsn) if k > result.snapshot_lsn]
    expected = result.snapshot_lsn + 1
    for record in result.records:
        if record.lsn > expected:
            result.gaps.append((expected, record.lsn - 1))
        expected = record.lsn + 1
    return result


@dataclass
class RepairReport:
    """What repair kept, what it dropped and where it put the damaged files."""

    salvaged_records: int
    dropped: list[str]
    unreadable_updates: list[int]
    moved_to: Path | None
    snapshot_lsn: int


def repair(path: Path | str) -> RepairReport:
    """Rebuild a damaged directory from everything readable; the caller must not have it open."""
    datadir = DataDir(path)
    if not datadir.exists():
        raise ReplicaError(f"{datadir.path} is not an agentstate data directory")
    datadir.lock()
    try:
        identity = datadir.load_or_create_identity(None)
        result = scan(datadir)
        parts: list[bytes] = [result.snapshot_state] if result.snapshot_state else []
        unreadable: list[int] = []
        for record in result.records:
            try:
                Doc().apply_update(record.payload)
            except ValueError:
                unreadable.append(record.lsn)
                continue
            parts.append(record.payload)
        state = merge_updates(*parts) if parts else Doc().get_update()
        Doc().apply_update(state)
        last_lsn = max([result.snapshot_lsn] + [r.lsn for r in result.records])
        moved: Path | None = None
        if not result.clean or unreadable or result.records:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
            moved = datadir.path / f"damaged-{stamp}"
            moved.mkdir()
            for source in (datadir.log_dir, datadir.snapshot_dir):
                if source.exists():
                    shutil.move(str(source), str(moved / source.name))
            fsync_directory(datadir.path)
        SnapshotStore(datadir.snapshot_dir).write(last_lsn, state, identity.replica_id)
        datadir.log_dir.mkdir(exist_ok=True)
        return RepairReport(
            salvaged_records=len(result.records) - len(unreadable),
            dropped=result.problems() + [f"record {lsn} is not a valid update" for lsn in unreadable],
            unreadable_updates=unreadable,
            moved_to=moved,
            snapshot_lsn=last_lsn,
        )
    finally:
        datadir.unlock()
