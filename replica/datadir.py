"""DataDir: the on-disk home of one replica, its identity, and the lock every process holds while it has it open."""

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
FILE_MODE = 0o600
"""Every file agentstate creates in a data directory is owner-only (the directory itself is 0700)."""


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
    """A replica directory: layout, identity file and the shared open lock."""

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

    def _lock_fd_open(self) -> int:
        if self._lock_fd is None:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock_fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        return self._lock_fd

    def share(self) -> None:
        """Hold `LOCK` shared for the life of an open replica: any number of processes may.

        Only `repair` (and an opener checking whether it is alone) takes it exclusively;
        the kernel drops it when the holder dies, so no stale lock is ever left behind."""
        fd = self._lock_fd_open()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            self.unlock()
            raise DataDirLockedError(self.path, self.read_holder()) from None

    def join(self) -> bool:
        """Hold `LOCK` for an opener (with the log's append lock held): True, exclusively, when alone.

        An opener that finds itself alone recovers the log, then calls `share()`."""
        if self.try_sole():
            return True
        self.share()
        return False

    def try_sole(self) -> bool:
        """True (holding `LOCK` exclusively) when no other process has the directory open.

        Call with the log's append lock held. A failed attempt leaves `LOCK` unheld: call
        `share()` next, as an opener does either way."""
        fd = self._lock_fd_open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def lock(self) -> None:
        """Take `LOCK` exclusively (repair), or raise DataDirLockedError when any process has it open."""
        if not self.try_sole():
            self.unlock()
            raise DataDirLockedError(self.path, self.read_holder())
        os.ftruncate(self._lock_fd_open(), 0)
        info = {"pid": os.getpid(), "since": datetime.now(timezone.utc).isoformat(), "purpose": "exclusive"}
        os.pwrite(self._lock_fd_open(), json.dumps(info).encode(), 0)

    def read_holder(self) -> dict[str, Any] | None:
        """What the last exclusive holder wrote about itself, if readable."""
        try:
            value = json.loads((self.path / LOCK_FILE).read_text() or "null")
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def unlock(self) -> None:
        """Release the lock, shared or exclusive (the file stays)."""
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
        tmp = path.with_name(f"{IDENTITY_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            os.write(fd, (json.dumps({"replica_id": ident.replica_id, "created_at": ident.created_at,
                                      "format": ident.format}, indent=2) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return self.load_or_create_identity(replica_id)
        finally:
            tmp.unlink(missing_ok=True)
        return ident
