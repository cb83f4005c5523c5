"""Helpers shared by the replica tests: polling, syncing replicas, comparing state, reading log files."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pycrdt import Array, Doc, Map

from replica import Replica
from replica.frames import SEGMENT_HEADER_SIZE, FrameProblem, Record, decode_at
from replica.schema import COUNTERS, EDGES, LESSONS, META, NODES, REMOVED_NODES, TASKS
from replica.update_log import list_segments

ROOTS: tuple[tuple[str, type], ...] = (
    (TASKS, Map), (NODES, Map), (EDGES, Map), (REMOVED_NODES, Map),
    (COUNTERS, Map), (LESSONS, Array), (META, Map),
)


def memory_replica(client_id: int, replica_id: str) -> Replica:
    """An in-memory replica with a chosen Yjs client id, so that concurrent-write tie-breaks are reproducible."""
    replica = Replica(Doc(client_id=client_id), replica_id)
    replica._init_meta()
    return replica


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.002) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


def exchange(a: Replica, b: Replica) -> None:
    """One full state-vector exchange in both directions, as the transport does on connect."""
    b.apply_update(a.diff(b.state_vector()), origin="peer")
    a.apply_update(b.diff(a.state_vector()), origin="peer")


def sync_all(replicas: list[Replica], rounds: int = 4) -> None:
    """Exchange between every pair until nothing changes (bounded: sweeps may emit new updates)."""
    for _ in range(rounds):
        before = [r.state_vector() for r in replicas]
        for i, a in enumerate(replicas):
            for b in replicas[i + 1 :]:
                exchange(a, b)
        if [r.state_vector() for r in replicas] == before:
            return
    raise AssertionError(f"replicas did not reach a fixed point within {rounds} rounds")


def doc_roots(doc: Doc) -> dict[str, Any]:
    """Every root type of a replica's Doc as plain Python, for exact comparisons."""
    return {name: doc.get(name, type=kind).to_py() for name, kind in ROOTS}


def fresh_doc_roots(replica: Replica) -> dict[str, Any]:
    """The roots of a fresh Doc that received `replica.diff(None)`: what a new peer would see."""
    doc = Doc()
    doc.apply_update(replica.diff(None))
    return doc_roots(doc)


def edge_keys(replica: Replica) -> list[str]:
    """Keys of the valid, non-dangling edges of a replica, sorted."""
    return sorted(e.key for e in replica.graph.edges())


def read_records(path: Path) -> list[tuple[int, Record, int]]:
    """Every record of a segment file as (offset, record, end offset), stopping at the clean end."""
    data = path.read_bytes()
    out: list[tuple[int, Record, int]] = []
    offset = SEGMENT_HEADER_SIZE
    while offset < len(data):
        found = decode_at(data, offset)
        if isinstance(found, FrameProblem):
            break
        record, end = found
        out.append((offset, record, end))
        offset = end
    return out


def segments(data_dir: Path) -> list[Path]:
    """The log segment files of a data directory, oldest first."""
    return [p for _, p in list_segments(data_dir / "log")]


def task_ids(replica: Replica) -> set[str]:
    """Ids of the valid tasks of a replica."""
    return {t.id for t in replica.tasks.list()}


def flip_byte(path: Path, offset: int) -> None:
    """Invert every bit of one byte of a file in place."""
    with path.open("r+b") as fh:
        fh.seek(offset)
        value = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([value ^ 0xFF]))
