"""Presence: what each agent on a data directory says it is doing, kept where `status` can show it.

Awareness (who is online, what they work on) travels only over a running mesh. So that
`agentstate presence set` works with or without one, each agent's latest presence is also
written to `presence/<agent>.json` in the data directory (atomically, one file per agent, so
any number of processes may write at once); `status` lists these, and a running mesh (the
daemon's, or an MCP server's own) is told too, so peers see it under "online".
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from replica.errors import FieldError

if TYPE_CHECKING:
    from replica import Replica

PRESENCE_DIR = "presence"
MAX_TEXT = 1000
MAX_AGENT = 200
MAX_ENTRIES = 1000
"""At most this many agents' presence files are read for status."""
_MEMORY: dict[str, dict[str, Any]] = {}


def _file_name(agent: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in agent)[:80]
    return f"{safe}-{hashlib.sha256(agent.encode()).hexdigest()[:8]}.json"


def presence_dir(data: Path) -> Path:
    """Where a data directory keeps its agents' presence files."""
    return data / PRESENCE_DIR


def write_presence(data: Path | None, agent: str, working_on: str) -> dict[str, Any]:
    """Record `agent`'s presence (in `data`, or in this process for an in-memory replica) and return it."""
    if not isinstance(agent, str) or not agent.strip() or len(agent) > MAX_AGENT:
        raise FieldError("presence", "agent", f"must be 1-{MAX_AGENT} characters")
    if not isinstance(working_on, str) or len(working_on) > MAX_TEXT:
        raise FieldError("presence", "working_on", f"must be text of at most {MAX_TEXT} characters")
    entry = {"agent": agent, "working_on": working_on, "at": time.time(), "pid": os.getpid()}
    if data is None:
        _MEMORY[agent] = entry
        return entry
    folder = presence_dir(data)
    folder.mkdir(mode=0o700, exist_ok=True)
    target = folder / _file_name(agent)
    temporary = folder / f".{target.name}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(entry).encode())
    finally:
        os.close(fd)
    os.replace(temporary, target)
    return entry


def read_presence(data: Path | None) -> list[dict[str, Any]]:
    """Every agent's latest presence on this directory, newest first, each with its age in seconds."""
    if data is None:
        entries = list(_MEMORY.values())
    else:
        entries = []
        try:
            names = sorted(os.listdir(presence_dir(data)))[:MAX_ENTRIES]
        except FileNotFoundError:
            names = []
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                raw = json.loads((presence_dir(data) / name).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(raw, dict) and isinstance(raw.get("agent"), str) and isinstance(raw.get("at"), (int, float)):
                entries.append(raw)
    now = time.time()
    shown = [{"agent": e["agent"], "working_on": str(e.get("working_on", "")), "at": e["at"],
              "age_seconds": round(max(0.0, now - e["at"]), 1)} for e in entries]
    return sorted(shown, key=lambda e: -e["at"])


def set_presence(replica: Replica, agent: str, working_on: str) -> dict[str, Any]:
    """Record `agent`'s presence for the replica's directory."""
    return write_presence(replica.datadir.path if replica.datadir is not None else None, agent, working_on)


def local_presence(replica: Replica) -> list[dict[str, Any]]:
    """The presence entries of the replica's directory."""
    return read_presence(replica.datadir.path if replica.datadir is not None else None)
