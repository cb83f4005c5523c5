"""The hash guard as commands (`guard.record`, `guard.verify`, `guard.clear`): compat's ConcurrencyGuard per agent.

An agent records the hash of a file it read, verifies the file before writing it (STALE_FILE
if someone changed it meanwhile) and clears the record after writing. Records replicate
(collection `guard_snapshots`) and the directory's JSONL trail lets any process, the daemon
or an MCP server, answer for the agent.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from replica.errors import FieldError

from .commands import command

if TYPE_CHECKING:
    from compat.guard import ConcurrencyGuard
    from replica import Replica

MAX_FILE_BYTES = 64 << 20
"""A file larger than this is not read to hash it (pass its content instead)."""
_GUARDS: weakref.WeakKeyDictionary[Replica, dict[str, ConcurrencyGuard]] = weakref.WeakKeyDictionary()


def _guard(replica: Replica, agent: Any) -> ConcurrencyGuard:
    from compat.guard import ConcurrencyGuard

    if not isinstance(agent, str) or not agent.strip() or len(agent) > 200:
        raise FieldError("guard", "agent", "must be 1-200 characters")
    guards = _GUARDS.setdefault(replica, {})
    found = guards.get(agent)
    if found is None:
        found = guards[agent] = ConcurrencyGuard(replica, agent=agent)
    return found


def _path(params: dict[str, Any]) -> str:
    path = params.get("file_path")
    if not isinstance(path, str) or not path or "\0" in path or len(path) > 4096:
        raise FieldError("guard", "file_path", "must be a path of 1-4096 characters")
    return path


@command("guard.record")
def _record(replica: Replica, params: dict[str, Any]) -> dict[str, Any]:
    """Remember the hash of what the agent read (the file as it is now unless `content` is given)."""
    path = _path(params)
    content = params.get("content")
    if content is None:
        target = Path(path)
        try:
            if target.stat().st_size > MAX_FILE_BYTES:
                raise FieldError("guard", "file_path", f"{path} is larger than {MAX_FILE_BYTES} bytes; "
                                                       "pass the content you read instead")
            content = target.read_bytes()
        except OSError as exc:
            raise FieldError("guard", "file_path", f"cannot read {path}: {exc.strerror}") from None
    elif not isinstance(content, str):
        raise FieldError("guard", "content", "must be text")
    snapshot = _guard(replica, params.get("agent")).record_snapshot(
        path, content, str(params.get("turn_id") or ""), params.get("intent_id"))
    return snapshot.to_dict()


@command("guard.verify")
def _verify(replica: Replica, params: dict[str, Any]) -> dict[str, Any]:
    """ok, or the STALE_FILE error (as data) when the file changed since the agent read it."""
    path = _path(params)
    guard = _guard(replica, params.get("agent"))
    stale = guard.verify_before_write(path)
    snapshot = guard.get_snapshot(path)
    return {"ok": stale is None, "file_path": str(Path(path).absolute()),
            "recorded": snapshot is not None, "error": None if stale is None else stale.to_dict()}


@command("guard.clear")
def _clear(replica: Replica, params: dict[str, Any]) -> dict[str, Any]:
    """Forget the agent's recorded read of a file (after its write)."""
    path = _path(params)
    return {"file_path": str(Path(path).absolute()), "cleared": _guard(replica, params.get("agent")).clear_snapshot(path)}
