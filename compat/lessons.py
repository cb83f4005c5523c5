"""Lesson recording (``append_lesson_to_claude`` of seed 004): what failed and how it was resolved.

Each lesson is appended, timestamped, to a markdown file (``CLAUDE.md`` in the current
directory unless told otherwise) and to the replica's replicated lessons list. The file
append holds an exclusive ``flock`` on the file, so agents appending at once lose
nothing; the replica list is a CRDT array, so concurrent appends on different replicas
all survive the sync.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

from compat import sharing
from compat.types import utc_now_iso
from replica import Replica

DEFAULT_LESSONS_FILE = "CLAUDE.md"
SECTION_HEADING = "## Lessons Learned"
FILE_HEADING = "# Lessons Learned"

ReplicaTarget = Union[Replica, str, Path, Any, None]


def format_lesson(context: str, failure: str, resolution: str, timestamp: str) -> str:
    """The markdown entry of one lesson."""
    return (
        f"\n### Lesson ({timestamp})\n\n"
        f"**Context**: {context.strip()}\n\n"
        f"**Failure**: {failure.strip()}\n\n"
        f"**Resolution**: {resolution.strip()}\n"
    )


def _append_to_file(path: Path, entry: str) -> None:
    """Append ``entry`` under an exclusive lock, adding the lessons heading the first time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        prefix = ""
        if size == 0:
            prefix = FILE_HEADING + "\n"
        else:
            existing = os.pread(fd, size, 0).decode("utf-8", errors="replace")
            if FILE_HEADING not in existing.splitlines() and SECTION_HEADING not in existing.splitlines():
                prefix = ("" if existing.endswith("\n") else "\n") + "\n" + SECTION_HEADING + "\n"
        os.write(fd, (prefix + entry).encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _resolve_replica(target: ReplicaTarget) -> "tuple[Optional[Replica], Optional[sharing.SharedReplica]]":
    """The replica to record in: given, found on a compat object, opened from a directory, or the only one open."""
    if isinstance(target, Replica):
        return target, None
    if target is None:
        open_dirs = sharing.open_directories()
        if len(open_dirs) == 1:
            shared = sharing.find_open(open_dirs[0])
            return (shared.replica, None) if shared is not None else (None, None)
        return None, None
    found = getattr(target, "replica", None)
    if isinstance(found, Replica):
        return found, None
    if isinstance(target, (str, Path)):
        shared = sharing.acquire(target)
        return shared.replica, shared
    raise TypeError(f"cannot record lessons in a {type(target).__name__}")


def append_lesson(
    context: str,
    failure: str,
    resolution: str,
    *,
    path: Optional[Union[str, Path]] = None,
    replica: ReplicaTarget = None,
    author: Optional[str] = None,
) -> Dict[str, Any]:
    """Append a lesson to the markdown file and to the replicated lessons list.

    ``path`` defaults to ``CLAUDE.md`` in the current directory. ``replica`` is a Replica,
    a compat object (store, manager, guard), or a directory; by default the one replica
    this process has open through compat, if exactly one is. Returns
    ``{"success", "path", "message"}`` and never raises for bad input or I/O errors."""
    target_path = Path(path) if path is not None else Path.cwd() / DEFAULT_LESSONS_FILE
    for name, value in (("context", context), ("failure", failure), ("resolution", resolution)):
        if not isinstance(value, str) or not value.strip():
            return {"success": False, "path": str(target_path), "message": f"{name} must be a non-empty string"}
    timestamp = utc_now_iso()
    try:
        _append_to_file(target_path, format_lesson(context, failure, resolution, timestamp))
    except OSError as exc:
        return {"success": False, "path": str(target_path), "message": f"could not append to {target_path}: {exc}"}
    try:
        found, opened = _resolve_replica(replica)
    except Exception as exc:
        return {
            "success": False,
            "path": str(target_path),
            "message": f"appended to {target_path}, but the replica could not be opened: {exc}",
        }
    if found is None:
        return {
            "success": True,
            "path": str(target_path),
            "message": f"Lesson appended to {target_path} (no replica given, so it was not shared)",
        }
    try:
        lesson = found.lessons.append(context.strip(), failure.strip(), resolution.strip(), author=author)
        found.flush()
    except Exception as exc:
        return {
            "success": False,
            "path": str(target_path),
            "message": f"appended to {target_path}, but recording it in the replica failed: {exc}",
        }
    finally:
        if opened is not None:
            sharing.release(opened)
    return {
        "success": True,
        "path": str(target_path),
        "message": f"Lesson appended to {target_path} and recorded as {lesson.id} in replica {found.replica_id}",
    }


__all__ = ["append_lesson", "format_lesson", "DEFAULT_LESSONS_FILE"]
