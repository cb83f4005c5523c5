"""DataDir: the on-disk home of one replica, its identity, and the lock that gives one process ownership."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import DataDirLockedError, StorageError

FORMAT_VERSION = 1
IDENTITY_FILE = "replica.json"
LOCK_FILE = "LOCK"
DAEMON_FILE = "daemon.json"
LOG_DIR = "log"
SNAPSHOT_DIR = "snapshots"


def new_replica_id() -> str:
    """A stable, human-readable replica name: `r-` and 12 random hex digits."""
    return f"r-{secrets.token_hex(6)}"


@dataclass(frozen=True)
class Identity:
    """What a data directory says about itself: its format and the replica it holds."""

    replica_id: str
    created_at: str
    format: int = FORMAT_VERSION


class DataDir:
    """Owns a replica directory: layout, identity file and the exclusive process lock."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser().resolve()
        self._lock_fd: int | None = None

    @property
    def log_dir(self) -> Path:
        """Where the update log's segments live."""
        return self.path / LOG_DIR

    @property
    def snapshot_dir(self) -> Path:
        """Where snapshots live."""
        return self.path / SNAPSHOT_DIR

    @property
    def daemon_file(self) -> Path:
        """Where a running daemon says how to reach it."""
        return self.path / DAEMON_FILE

    def exists(self) -> bool:
        """True once the directory has been initialised."""
        return (self.path / IDENTITY_FILE).is_file()

    def lock(self) -> None:
        """Take the exclusive lock, or raise DataDirLockedError naming the holder.

        flock is released by the kernel when the holder dies, so a killed process never
        leaves a stale lock behind.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirLockedError(self.path, self.read_holder()) from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "since": datetime.now(timezone.utc).isoformat()}
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._lock_fd = fd

    def read_holder(self) -> dict[str, Any] | None:
        """What the current lock holder wrote about itself, if readable."""
        try:
            value = json.loads((self.path / LOCK_FILE).read_text() or "null")
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def unlock(self) -> None:
        """Release the lock (the file stays)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load_or_create_identity(self, replica_id: str | None) -> Identity:
        """Read the identity file, creating it on first use; refuse a mismatching replica id."""
        path = self.path / IDENTITY_FILE
        if path.is_file():
            try:
                raw = json.loads(path.read_text())
                ident = Identity(str(raw["replica_id"]), str(raw["created_at"]), int(raw["format"]))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise StorageError(f"{path} is unreadable: {exc}") from exc
            if ident.format != FORMAT_VERSION:
                raise StorageError(f"{path}: unsupported data directory format {ident.format}")
            if replica_id is not None and replica_id != ident.replica_id:
                raise StorageError(
                    f"{self.path} holds replica {ident.replica_id!r}, not {replica_id!r}"
                )
            return ident
        ident = Identity(replica_id or new_replica_id(), datetime.now(timezone.utc).isoformat())
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"replica_id": ident.replica_id, "created_at": ident.created_at,
                                   "format": ident.format}, indent=2) + "\n")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return ident
