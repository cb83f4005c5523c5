"""Content-hash guard (the ConcurrencyGuard of seed 004): refuse writes to files that changed since they were read.

An agent records a snapshot (SHA-256 of the content) when it reads a file, checks the
file against it before writing, and clears it after a successful write. If the file
changed in between (another agent wrote it), ``verify_before_write`` returns a
STALE_FILE error that says what changed and tells the caller to re-read; recording a
new snapshot after the re-read lets the write through.

Snapshots are kept twice: appended to a JSONL file in the guard's directory (the local
audit trail, which also restores the open snapshots after a restart) and written to the
replica collection ``guard_snapshots``, so every synced agent sees who read what, by
turn, intent and file.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from compat import sharing
from compat.config import DurabilityMode
from compat.errors import GoTError
from compat.types import utc_now_iso
from replica import Replica

SNAPSHOTS_COLLECTION = "guard_snapshots"
"""Replica collection of every snapshot recorded by any agent."""

JSONL_FILE_NAME = "guard_snapshots.jsonl"
"""Local audit trail in the guard's directory: one JSON line per snapshot recorded or cleared."""

STALE_FILE = "STALE_FILE"


def hash_content(content: Union[str, bytes]) -> str:
    """SHA-256 hex digest of ``content`` (text is encoded as UTF-8)."""
    data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    return hashlib.sha256(data).hexdigest()


def _file_hashes(data: bytes) -> List[str]:
    """Hashes a reader may have taken of these bytes: raw, and as text read with universal newlines."""
    hashes = [hash_content(data)]
    text = data.decode("utf-8", errors="surrogateescape").replace("\r\n", "\n").replace("\r", "\n")
    try:
        as_text = hash_content(text)
    except UnicodeEncodeError:
        return hashes
    if as_text not in hashes:
        hashes.append(as_text)
    return hashes


@dataclass
class FileSnapshot:
    """What one agent read of one file, and when."""

    snapshot_id: str
    file_path: str
    content_hash: str
    turn_id: str
    intent_id: Optional[str]
    agent: str
    recorded_at: str
    cleared_at: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> Optional["FileSnapshot"]:
        """Rebuild a snapshot; None for a malformed record (a peer's junk)."""
        try:
            return cls(
                snapshot_id=str(data["snapshot_id"]),
                file_path=str(data["file_path"]),
                content_hash=str(data["content_hash"]),
                turn_id=str(data["turn_id"]),
                intent_id=None if data.get("intent_id") is None else str(data["intent_id"]),
                agent=str(data["agent"]),
                recorded_at=str(data["recorded_at"]),
                cleared_at=None if data.get("cleared_at") is None else str(data["cleared_at"]),
            )
        except (KeyError, TypeError):
            return None


class StaleFileError(GoTError):
    """STALE_FILE: the file changed since it was read; re-read it before writing.

    ``verify_before_write`` *returns* this (it is an error value, not raised); raise it if
    that suits the caller. ``to_dict()`` adds ``code: "STALE_FILE"``."""

    code = STALE_FILE

    def to_dict(self) -> Dict[str, Any]:
        """``{code, error_type, message, context}``."""
        return {"code": self.code, **super().to_dict()}

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]


class ConcurrencyGuard:
    """Optimistic file-write guard shared through a replica (see the module docstring).

    ``directory_or_replica`` is a directory (its replica is opened, or joined if this
    process has it open) or a Replica. ``agent`` names this reader (default: the replica
    id). The JSONL trail goes to ``jsonl_path`` (default: the directory's
    ``guard_snapshots.jsonl``; none for an in-memory replica)."""

    def __init__(
        self,
        directory_or_replica: Union[str, Path, Replica],
        *,
        agent: Optional[str] = None,
        jsonl_path: Optional[Union[str, Path]] = None,
        durability: DurabilityMode = DurabilityMode.BALANCED,
    ) -> None:
        self._lease: Optional[sharing.Lease] = None
        if isinstance(directory_or_replica, Replica):
            self.replica = directory_or_replica
            home = self.replica.datadir.path if self.replica.datadir is not None else None
        else:
            home = Path(directory_or_replica)
            self._lease = sharing.lease(self, home, durability)
            self.replica = self._lease.shared.replica
        if jsonl_path is not None:
            self.jsonl_path: Optional[Path] = Path(jsonl_path)
        else:
            self.jsonl_path = home / JSONL_FILE_NAME if home is not None else None
        self.agent: str = agent or self.replica.replica_id
        self._records = self.replica.collection(SNAPSHOTS_COLLECTION)
        self._lock = threading.Lock()
        self._open: Dict[str, FileSnapshot] = {}
        self._restore()

    # ----------------------------------------------------------------- paths

    @staticmethod
    def _path(file_path: Union[str, Path]) -> str:
        return os.path.abspath(os.fspath(file_path))

    # ------------------------------------------------------------ the guard

    def record_snapshot(
        self, file_path: Union[str, Path], content: Union[str, bytes], turn_id: str, intent_id: Optional[str] = None
    ) -> FileSnapshot:
        """Remember the hash of what was read (replacing this agent's earlier snapshot of the file)."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        snapshot = FileSnapshot(
            snapshot_id=f"FS-{stamp}-{secrets.token_hex(4)}",
            file_path=self._path(file_path),
            content_hash=hash_content(content),
            turn_id=str(turn_id),
            intent_id=None if intent_id is None else str(intent_id),
            agent=self.agent,
            recorded_at=utc_now_iso(),
        )
        with self._lock:
            self._append({"event": "snapshot", **snapshot.to_dict()})
            with self.replica.transaction():
                self._records.put(snapshot.snapshot_id, snapshot.to_dict())
            self._open[snapshot.file_path] = snapshot
        return snapshot

    def verify_before_write(self, file_path: Union[str, Path]) -> Optional[StaleFileError]:
        """None when the file still has the content this agent read (or was never read through the guard);
        otherwise a STALE_FILE error saying what changed."""
        path = self._path(file_path)
        with self._lock:
            snapshot = self._open.get(path)
        if snapshot is None:
            return None
        try:
            actual: List[str] = _file_hashes(Path(path).read_bytes())
        except FileNotFoundError:
            actual = []
        if snapshot.content_hash in actual:
            return None
        found = actual[0] if actual else None
        what = "was deleted" if found is None else f"now hashes to {found}"
        return StaleFileError(
            f"{STALE_FILE}: {path} changed since it was read (read with sha256 {snapshot.content_hash} by "
            f"{snapshot.agent} in turn {snapshot.turn_id}; it {what}). Re-read the file, then write again.",
            code=STALE_FILE,
            file_path=path,
            expected_hash=snapshot.content_hash,
            actual_hash=found,
            recorded_by=snapshot.agent,
            turn_id=snapshot.turn_id,
            intent_id=snapshot.intent_id,
            recorded_at=snapshot.recorded_at,
            resolution="re-read the file and record a new snapshot before writing",
        )

    def clear_snapshot(self, file_path: Union[str, Path]) -> bool:
        """Forget this agent's snapshot of the file (after a successful write); False if there was none."""
        path = self._path(file_path)
        with self._lock:
            snapshot = self._open.pop(path, None)
            if snapshot is None:
                return False
            snapshot.cleared_at = utc_now_iso()
            self._append({"event": "clear", **snapshot.to_dict()})
            with self.replica.transaction():
                self._records.put(snapshot.snapshot_id, snapshot.to_dict())
        return True

    def get_snapshot(self, file_path: Union[str, Path]) -> Optional[FileSnapshot]:
        """This agent's open snapshot of the file, if any."""
        with self._lock:
            return self._open.get(self._path(file_path))

    # ---------------------------------------------------------------- queries

    def all_snapshots(self) -> List[FileSnapshot]:
        """Every snapshot any synced agent recorded, oldest first."""
        found = [FileSnapshot.from_dict(data) for data in self._records.all().values()]
        return sorted((s for s in found if s is not None), key=lambda s: (s.recorded_at, s.snapshot_id))

    def get_snapshots_by_turn(self, turn_id: str) -> List[FileSnapshot]:
        """Snapshots recorded in turn ``turn_id`` (every agent)."""
        return [s for s in self.all_snapshots() if s.turn_id == str(turn_id)]

    def get_snapshots_by_intent(self, intent_id: str) -> List[FileSnapshot]:
        """Snapshots recorded for intent ``intent_id`` (every agent)."""
        return [s for s in self.all_snapshots() if s.intent_id == str(intent_id)]

    def get_snapshots_by_file(self, file_path: Union[str, Path]) -> List[FileSnapshot]:
        """Snapshots of one file (every agent)."""
        path = self._path(file_path)
        return [s for s in self.all_snapshots() if s.file_path == path]

    # ------------------------------------------------------------- persistence

    def _append(self, line: Dict[str, Any]) -> None:
        if self.jsonl_path is None:
            return
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(line, sort_keys=True) + "\n").encode("utf-8")
        fd = os.open(self.jsonl_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def _restore(self) -> None:
        """Reopen this agent's uncleared snapshots from the JSONL trail."""
        if self.jsonl_path is None or not self.jsonl_path.exists():
            return
        with open(self.jsonl_path, "r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(data, dict):
                    continue
                snapshot = FileSnapshot.from_dict(data)
                if snapshot is None or snapshot.agent != self.agent:
                    continue
                if data.get("event") == "snapshot":
                    self._open[snapshot.file_path] = snapshot
                elif data.get("event") == "clear":
                    current = self._open.get(snapshot.file_path)
                    if current is not None and current.snapshot_id == snapshot.snapshot_id:
                        del self._open[snapshot.file_path]

    def close(self) -> None:
        """Release the replica if the guard opened it."""
        if self._lease is not None:
            self._lease.close()

    def __enter__(self) -> "ConcurrencyGuard":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = ["ConcurrencyGuard", "FileSnapshot", "StaleFileError", "hash_content", "STALE_FILE"]
