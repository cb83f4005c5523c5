"""Backup and restore of a data directory, while other processes keep writing to it.

A backup is the directory's whole state as one Yjs update, taken through a replica this
process opens (any number of processes may): the read scope first applies every record
any process appended, so the backup holds every write acknowledged before it began, and
it is one consistent state (taken under the replica's lock). It is written to a new
directory `DEST` as `state.yupdate` plus `backup.json` (replica id, checksum, sizes), each
fsynced, then renamed into place, so a crash never leaves a half backup under DEST's name.

Restore checks the checksum and that the update decodes, then builds a fresh data
directory (same replica id unless another is given) holding that state as a snapshot.
It only fills an empty or missing directory: it never merges into or replaces data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrdt import Doc

from .durability import Durability
from .errors import ReplicaError
from .replica import Replica
from .update_log import fsync_directory

FORMAT = 1
MANIFEST = "backup.json"
STATE = "state.yupdate"


class BackupError(ReplicaError):
    """A backup that cannot be read or used: missing files, wrong checksum, undecodable state."""


class BackupTargetError(ReplicaError, ValueError):
    """Where a backup or restore would write already holds something (nothing was changed)."""


@dataclass(frozen=True)
class BackupInfo:
    """What a backup holds: whose state, how big, when, and its checksum."""

    path: Path
    replica_id: str
    created_at: str
    state_bytes: int
    sha256: str
    last_lsn: int
    counts: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the CLI prints it)."""
        return {"path": str(self.path), "replica_id": self.replica_id, "created_at": self.created_at,
                "state_bytes": self.state_bytes, "sha256": self.sha256, "last_lsn": self.last_lsn,
                "counts": dict(self.counts)}


def _write_synced(path: Path, data: bytes) -> None:
    """Write `data` to a new file at `path` (0600) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _empty_or_missing(path: Path) -> bool:
    """True when `path` does not exist or is an empty directory."""
    if not path.exists():
        return True
    return path.is_dir() and not any(path.iterdir())


def backup(source: Path | str, dest: Path | str) -> BackupInfo:
    """Write a consistent backup of the data directory `source` into the new directory `dest`."""
    source, dest = Path(source), Path(dest)
    if not (source / "replica.json").is_file():
        raise BackupError(f"{source} is not an agentstate data directory (no replica.json)")
    if not _empty_or_missing(dest):
        raise BackupTargetError(f"{dest} already exists and is not empty: back up into a new directory")
    with Replica.open(source, durability=Durability.LAZY) as replica:
        with replica.access.read():
            state = replica.doc.get_update()
            last_lsn = replica.last_lsn
    copy = Replica.memory(replica.replica_id)
    copy.apply_update(state)
    stats = copy.stats()
    counts = {key: int(value) for key, value in stats.items()
              if key in ("tasks", "nodes", "edges", "counters", "lessons")}
    info = BackupInfo(path=dest, replica_id=replica.replica_id,
                      created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      state_bytes=len(state), sha256=hashlib.sha256(state).hexdigest(),
                      last_lsn=last_lsn, counts=counts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    try:
        _write_synced(staging / STATE, state)
        manifest = {"format": FORMAT, **info.as_dict()}
        manifest.pop("path")
        _write_synced(staging / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        fsync_directory(staging)
        if dest.exists():
            dest.rmdir()
        os.rename(staging, dest)
        fsync_directory(dest.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info


def read_backup(path: Path | str) -> tuple[BackupInfo, bytes]:
    """A backup's manifest and state, checked: the checksum matches and the update decodes."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        state = (path / STATE).read_bytes()
    except FileNotFoundError as exc:
        raise BackupError(f"{path} is not an agentstate backup (missing {Path(exc.filename).name})") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path}: cannot read the backup: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: unknown backup format {manifest.get('format') if isinstance(manifest, dict) else manifest!r}")
    digest = hashlib.sha256(state).hexdigest()
    if digest != manifest.get("sha256") or len(state) != manifest.get("state_bytes"):
        raise BackupError(f"{path}: {STATE} does not match its checksum (damaged or altered)")
    try:
        Doc().apply_update(state)
    except Exception as exc:
        raise BackupError(f"{path}: {STATE} is not a valid Yjs update: {exc}") from None
    try:
        info = BackupInfo(path=path, replica_id=str(manifest["replica_id"]), created_at=str(manifest["created_at"]),
                          state_bytes=len(state), sha256=digest, last_lsn=int(manifest.get("last_lsn", 0)),
                          counts={str(k): int(v) for k, v in dict(manifest.get("counts") or {}).items()})
    except (KeyError, TypeError, ValueError) as exc:
        raise BackupError(f"{path}: the manifest is incomplete: {exc}") from None
    return info, state


def restore(source: Path | str, dest: Path | str, *, replica_id: str | None = None) -> BackupInfo:
    """Build the data directory `dest` (missing or empty) from the backup at `source`."""
    dest = Path(dest)
    if not _empty_or_missing(dest):
        raise BackupTargetError(f"{dest} is not empty: restore only into a new or empty directory")
    info, state = read_backup(source)
    created = not dest.exists()
    try:
        with Replica.open(dest, durability=Durability.PARANOID, replica_id=replica_id or info.replica_id) as replica:
            replica.apply_update(state, origin="restore")
            replica.compact()
            replica.flush()
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for child in dest.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise
    return info
