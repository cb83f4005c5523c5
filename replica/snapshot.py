"""Snapshots: the full Doc state at a log position, written atomically, so the log can be compacted."""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import msgpack

from .update_log import fsync_directory

log = logging.getLogger(__name__)

SNAPSHOT_MAGIC = b"AGSTSNP1"
SNAPSHOT_VERSION = 1
SNAPSHOT_SUFFIX = ".snap"
_HEAD = struct.Struct("<8sIQI")
KEEP = 2


@dataclass(frozen=True)
class Snapshot:
    """The Doc state covering every log record up to and including `lsn`."""

    lsn: int
    state: bytes
    replica_id: str
    created_at: str
    path: Path


@dataclass(frozen=True)
class SnapshotProblem:
    """A snapshot file that could not be used, and why."""

    path: Path
    reason: str


def snapshot_name(lsn: int) -> str:
    """File name of the snapshot that covers the log up to `lsn`."""
    return f"{lsn:016d}{SNAPSHOT_SUFFIX}"


def encode_snapshot(lsn: int, state: bytes, replica_id: str, created_at: str) -> bytes:
    """Serialise a snapshot: magic, version, body length, CRC-32 of the body, msgpack body."""
    body = msgpack.packb(
        {"lsn": lsn, "state": state, "replica_id": replica_id, "created_at": created_at},
        use_bin_type=True,
    )
    return _HEAD.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, len(body), zlib.crc32(body)) + body


def decode_snapshot(data: bytes, path: Path) -> Snapshot | SnapshotProblem:
    """Parse a snapshot file's bytes, or say precisely why they are unusable."""
    if len(data) < _HEAD.size:
        return SnapshotProblem(path, "truncated header")
    magic, version, length, crc = _HEAD.unpack_from(data, 0)
    if magic != SNAPSHOT_MAGIC:
        return SnapshotProblem(path, "not an agentstate snapshot (bad magic)")
    if version != SNAPSHOT_VERSION:
        return SnapshotProblem(path, f"unsupported snapshot version {version}")
    body = data[_HEAD.size :]
    if len(body) != length:
        return SnapshotProblem(path, f"truncated: {len(body)} of {length} body bytes")
    if zlib.crc32(body) != crc:
        return SnapshotProblem(path, "checksum mismatch")
    try:
        value = msgpack.unpackb(body, raw=False)
        snap = Snapshot(
            lsn=int(value["lsn"]),
            state=bytes(value["state"]),
            replica_id=str(value["replica_id"]),
            created_at=str(value["created_at"]),
            path=path,
        )
    except Exception as exc:
        return SnapshotProblem(path, f"unreadable body: {exc}")
    return snap


class SnapshotStore:
    """The snapshots of one data directory: newest valid one wins, the two newest are kept."""

    def __init__(self, directory: Path, *, sync: bool = True) -> None:
        self.directory = Path(directory)
        self.sync = sync

    def paths(self) -> list[tuple[int, Path]]:
        """Snapshot files as (lsn, path), oldest first."""
        found: list[tuple[int, Path]] = []
        if not self.directory.is_dir():
            return found
        for path in self.directory.iterdir():
            stem = path.name[: -len(SNAPSHOT_SUFFIX)]
            if path.name.endswith(SNAPSHOT_SUFFIX) and stem.isdigit():
                found.append((int(stem), path))
        found.sort()
        return found

    def load_latest(self) -> tuple[Snapshot | None, list[SnapshotProblem]]:
        """The newest readable snapshot, plus every newer one that had to be skipped."""
        problems: list[SnapshotProblem] = []
        for lsn, path in reversed(self.paths()):
            found = decode_snapshot(path.read_bytes(), path)
            if isinstance(found, SnapshotProblem):
                log.warning("skipping snapshot %s: %s", path, found.reason)
                problems.append(found)
                continue
            if found.lsn != lsn:
                problem = SnapshotProblem(path, f"names lsn {lsn} but holds lsn {found.lsn}")
                log.warning("skipping snapshot %s: %s", path, problem.reason)
                problems.append(problem)
                continue
            return found, problems
        return None, problems

    def write(self, lsn: int, state: bytes, replica_id: str) -> Path:
        """Write a snapshot atomically (temp file, fsync, rename, directory fsync); a failed one leaves nothing."""
        self.directory.mkdir(parents=True, exist_ok=True)
        created_at = datetime.now(timezone.utc).isoformat()
        data = encode_snapshot(lsn, state, replica_id, created_at)
        final = self.directory / snapshot_name(lsn)
        tmp = final.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, final)
        if self.sync:
            fsync_directory(self.directory)
        return final

    def prune(self) -> int | None:
        """Keep the newest KEEP snapshots; return the lsn the oldest kept one covers, if any."""
        entries = self.paths()
        for _, path in entries[:-KEEP]:
            path.unlink()
        kept = entries[-KEEP:]
        if len(kept) < KEEP:
            return None
        return kept[0][0]
