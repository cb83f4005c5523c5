"""The floor under a compat commit: the same writes made with raw pycrdt and os calls, nothing else.

Run by the compat benchmark in a fresh process with the commit workers' protocol (argv:
directory, mode, kind, count, name, limit; prints "ready", waits for a line, prints one
JSON result). Per commit it writes what a compat commit must: four WAL lines (canonical
JSON, SHA-256 checksum, one append each), the entity record with its checksum, its write
record (which holds the data), the board task and the commit counter's slot, in one Doc
transaction whose update is appended to a log file; PARANOID and BALANCED fsync that log
once per commit. A read-modify-commit first reads the record back and verifies its
checksum. No validation, no locks, no other process, no conflict check: what any
implementation on pycrdt pays at least, so a goal above it is out of reach.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from typing import Any, Dict

from pycrdt import Doc, Map

LOG_BYTES = 64 << 20
"""The update log is preallocated (as the replica's segments are), so a data sync need not touch metadata."""
ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def checksum(data: Dict[str, Any]) -> str:
    """The compat checksum: SHA-256 of the canonical JSON, 16 hex digits."""
    return hashlib.sha256(ENCODER.encode(data).encode("utf-8")).hexdigest()[:16]


def main() -> None:
    """Commit `count` times as told, then print the result line."""
    directory, mode, kind, count_text, name, limit_text = sys.argv[1:7]
    count, limit = int(count_text), float(limit_text)
    os.makedirs(directory, exist_ok=True)
    sync = mode in ("PARANOID", "BALANCED")
    log = os.open(os.path.join(directory, "updates.log"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.posix_fallocate(log, 0, LOG_BYTES)
    os.fsync(log)
    end = [0]

    def append(update: bytes) -> None:
        end[0] += os.pwrite(log, update, end[0])

    wal = os.open(os.path.join(directory, "current.wal"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    doc = Doc()
    records = doc.get("entities", type=Map)
    writes = doc.get("entities_writes", type=Map)
    tasks = doc.get("tasks", type=Map)
    counters = doc.get("counters", type=Map)
    doc.observe(lambda event: append(event.update))
    state = {"seq": 0, "version": 0}

    def wal_line(tx: str, op: str, data: Dict[str, Any]) -> None:
        state["seq"] += 1
        body = {"seq": state["seq"], "ts": datetime.now(timezone.utc).isoformat(), "tx": tx, "op": op, "data": data}
        canonical = ENCODER.encode(body).encode("utf-8")
        digest = hashlib.sha256(canonical).hexdigest()[:16].encode("ascii")
        os.write(wal, canonical[:-1] + b',"checksum":"' + digest + b'"}\n')

    def commit(tx: str, entity_id: str, title: str, version: int, created_at: str = "") -> None:
        now = datetime.now(timezone.utc).isoformat()
        data = {"id": entity_id, "entity_type": "task", "version": version, "created_at": created_at or now,
                "modified_at": now,
                "title": title, "status": "pending", "priority": "medium", "description": "", "properties": {},
                "metadata": {}}
        state["version"] += 1
        body = dict(data, _got={"checksum": checksum(data), "tx": tx, "gv": state["version"], "written_at": now,
                                "board": 2})
        with doc.transaction():
            entry = records.get(entity_id)
            if isinstance(entry, Map):
                for field in ("title", "version", "modified_at", "_got"):
                    entry[field] = body[field]
            else:
                records[entity_id] = Map(body)
            writes[f"{entity_id}|{name}|{state['version']}"] = {
                "record": entity_id, "writer": name, "seq": state["version"], "clock": {name: state["version"]},
                "at": now, "fields": sorted(body), "data": body, "version": state["version"]}
            task = tasks.get(entity_id)
            if isinstance(task, Map):
                task["title"] = title
                task["updated_at"] = now
            else:
                tasks[entity_id] = Map({"title": title, "description": "", "status": "pending", "priority": "medium",
                                        "owner": None, "created_at": now, "updated_at": now, "created_by": name,
                                        "tags": Map(), "depends_on": Map(), "properties": Map()})
            counters[f"global_version|{doc.client_id}"] = {"p": float(state["version"]), "n": 0.0}
        if sync:
            os.fdatasync(log)

    hot = f"T-hot-{name}"
    if kind == "modify":
        commit("TX-hot", hot, "0", 2)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    cpu = time.process_time()
    ok = 0
    while ok < count and time.monotonic() < start + limit:
        tx = f"TX-{name}-{ok}"
        wal_line(tx, "TX_BEGIN", {"snapshot": state["version"]})
        if kind == "modify":
            raw = json.loads(str(records[hot]))
            stored = {k: v for k, v in raw.items() if k != "_got"}
            assert raw["_got"]["checksum"] == checksum(stored)
            entity_id, title, version = hot, str(int(stored["title"]) + 1), stored["version"] + 1
            created_at = stored["created_at"]
        else:
            entity_id, title, version, created_at = f"T-{name}-{ok}", "created", 2, ""
        wal_line(tx, "WRITE", {"entity_id": entity_id, "old_version": version - 1, "new_version": version})
        wal_line(tx, "TX_PREPARE", {})
        commit(tx, entity_id, title, version, created_at)
        wal_line(tx, "TX_COMMIT", {"version": state["version"]})
        ok += 1
    end = time.monotonic()
    print(json.dumps({"ok": ok, "attempts": ok, "start": start, "end": end, "reasons": {},
                      "log_fsyncs": ok if sync else 0, "cpu": time.process_time() - cpu}), flush=True)


if __name__ == "__main__":
    main()
