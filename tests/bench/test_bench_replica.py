"""Replica benchmarks (issue 2): update throughput per mode, open time, replay rate, memory."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pycrdt import Array, Doc, Map

from replica import Replica
from replica.history import COMPACT_EVERY, MAX_HISTORY
from replica.models import iso_now

from .conftest import fsync_rate, note, paired, report

TASKS = 1000
UPDATES = 20_000


def _record_body(key: str, writer: str, seq: int, at: str, status: str) -> dict[str, object]:
    """The write record of one status update, shaped as a task write record, for the raw pycrdt baselines."""
    return {"record": key, "writer": writer, "seq": seq, "clock": {writer: seq}, "at": at,
            "fields": {"status": status}, "data": {}}


def _raw_rate(with_record: bool = False, log_dir: Path | None = None) -> float:
    """Raw pycrdt doing the same Y writes a task update does (status and updated_at), no layer; with
    `with_record`, also the write record a task update stores (the same body appended to the task's
    slot array, the slot cut to its last record every 4th write to it, as compaction does); with
    `log_dir`, each transaction's update also appended to a file there, length first (what keeping
    a local log costs at least: no lock, no checksum, no fsync)."""
    doc = Doc()
    tasks = doc.get("tasks", type=Map)
    writes = doc.get("tasks_writes", type=Map)
    writer = "bench.123456789"
    slots: dict[str, Array] = {}
    with doc.transaction():
        for i in range(TASKS):
            tasks[f"T{i}"] = Map({"title": "x", "status": "pending", "updated_at": iso_now()})
    log = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / f"raw-{time.perf_counter_ns()}.log"
        log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        subscription = doc.observe(lambda event: os.write(log, len(event.update).to_bytes(4, "little") + event.update))
    start = time.perf_counter()
    for i in range(UPDATES):
        with doc.transaction():
            key = f"T{i % TASKS}"
            entry = tasks[key]
            status = "completed" if i % 2 else "pending"
            now = iso_now()
            entry["status"] = status
            entry["updated_at"] = now
            if with_record:
                slot = slots.get(key)
                if slot is None:
                    slot = slots[key] = writes[f"{key}|{writer}"] = Array()
                slot.insert(len(slot), _record_body(key, writer, i + 1, now, status))
                if (i // TASKS) % 4 == 3:
                    del slot[: len(slot) - 1]
    rate = UPDATES / (time.perf_counter() - start)
    if log is not None:
        doc.unobserve(subscription)
        os.fsync(log)
        os.close(log)
        path.unlink()
    return rate


def _replica_rate(path: Path, mode: str, updates: int) -> float:
    with Replica.open(path, durability=mode) as replica:
        with replica.transaction():
            ids = [replica.tasks.create(f"task {i}").id for i in range(TASKS)]
        start = time.perf_counter()
        for i in range(updates):
            replica.tasks.update(ids[i % TASKS], status="completed" if i % 2 else "pending")
        return updates / (time.perf_counter() - start)


@pytest.mark.parametrize("mode", ["lazy", "balanced"])
def test_task_updates_per_second(tmp_path: Path, mode: str) -> None:
    """A typed task update (with its write record, issue 9) against raw pycrdt's two field writes, and
    against raw pycrdt writing the same fields and the same write record, with and without appending
    each update to a file: the floors of any layer that stores a record per write and keeps a log.

    The goal is judged on the median of each round's own ratios (the four runs of a round follow each
    other within seconds), since this machine's speed moves by up to 2x from one second to the next."""
    rounds = [(_raw_rate(), _raw_rate(with_record=True), _raw_rate(with_record=True, log_dir=tmp_path / "raw"),
               _replica_rate(tmp_path / f"{mode}-{time.perf_counter_ns()}", mode, UPDATES)) for _ in range(5)]
    raw, raw_record, raw_logged, ours = (statistics.median(column) for column in zip(*rounds, strict=True))
    report(f"task field updates/s, {mode.upper()}", ours, raw, "upd/s",
           goal=">= 0.4x (issue 9), judged on the round ratios below", baseline_name="raw pycrdt")
    report(f"task field updates/s, {mode.upper()}, vs the same record", ours, raw_record, "upd/s",
           goal="reported", baseline_name="raw+record")
    report("raw pycrdt with the write record vs without", raw_record, raw, "upd/s", goal="reported",
           baseline_name="raw pycrdt")
    report("raw pycrdt with the write record and a log append vs without", raw_logged, raw, "upd/s",
           goal="the most a logged update with its record reaches here", baseline_name="raw pycrdt")
    ratio, record_ratio, logged_ratio = (statistics.median(row[k] / row[0] for row in rounds) for k in (3, 1, 2))
    note(f"task field updates, {mode.upper()}, per round (ours / raw+record+log / raw+record, each over raw): "
         + ", ".join(f"{u / r:.2f} / {lg / r:.2f} / {rc / r:.2f}" for r, rc, lg, u in rounds)
         + f"; medians {ratio:.2f} / {logged_ratio:.2f} / {record_ratio:.2f}; goal >= 0.4x "
         + ("met" if ratio >= 0.4 else "NOT MET"))
    if ratio < 0.4:
        reach = ("out of reach here: raw pycrdt storing the same record and appending its update to a file is "
                 f"itself {logged_ratio:.2f}x" if logged_ratio < 0.4 else
                 f"raw pycrdt storing the same record and appending its update to a file is {logged_ratio:.2f}x")
        print(f"\nGOAL NOT MET: a task update with its write record is {ratio:.2f}x raw pycrdt's field "
              f"update; raw pycrdt storing the same record alone is {record_ratio:.2f}x; {reach}")
    assert ratio >= 0.1, "task updates regressed past 0.1x raw pycrdt"


def test_paranoid_updates_vs_raw_fsync(tmp_path: Path) -> None:
    disk, ours = paired(7, lambda: fsync_rate(tmp_path),
                        lambda: _replica_rate(tmp_path / f"p-{time.perf_counter_ns()}", "paranoid", 300))
    report("task field updates/s, PARANOID", ours, disk, "upd/s", goal=">= 0.8x", baseline_name="raw fsync")


BIG = 100_000
_BUILD = """
import sys, time
from replica import Replica
with Replica.open(sys.argv[1], durability="lazy") as r:
    with r.transaction():
        for i in range(int(sys.argv[2])):
            r.tasks.create(f"task {i}", id=f"T-{i:07d}", tags=["bench"], properties={"n": i})
    r.compact()
"""

_OPEN = """
import json, sys, time, resource
from pathlib import Path
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
mode = sys.argv[1]
import pycrdt
from replica import Replica
from replica.snapshot import SnapshotStore
state = SnapshotStore(Path(sys.argv[2]) / "snapshots").load_latest()[0].state
del sys.modules["replica"]
before = rss()
start = time.perf_counter()
if mode == "raw":
    doc = pycrdt.Doc()
    doc.apply_update(state)
    size = len(doc.get("tasks", type=pycrdt.Map))
else:
    r = Replica.open(sys.argv[2], durability="lazy")
    size = len(r.tasks)
elapsed = time.perf_counter() - start
del state
import gc; gc.collect()
print(json.dumps({"seconds": elapsed, "rss": rss() - before, "size": size}))
"""


@pytest.fixture(scope="module")
def big_replica(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "data"
    subprocess.run([sys.executable, "-c", _BUILD, str(path), str(BIG)], check=True)
    return path


def _measure(mode: str, path: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _OPEN, mode, str(path)], check=True, capture_output=True).stdout
    result = json.loads(out)
    assert result["size"] == BIG
    return result


def test_open_from_snapshot(big_replica: Path) -> None:
    raw = [_measure("raw", big_replica) for _ in range(3)]
    ours = [_measure("replica", big_replica) for _ in range(3)]
    raw_s = sorted(r["seconds"] for r in raw)[1]
    ours_s = sorted(r["seconds"] for r in ours)[1]
    report(f"open {BIG:,} tasks from snapshot", ours_s, raw_s, "s", goal="<= 1.3x", higher_is_better=False,
           baseline_name="raw apply")
    raw_mem = sorted(r["rss"] for r in raw)[1] / 2**20
    ours_mem = sorted(r["rss"] for r in ours)[1] / 2**20
    report(f"resident memory for {BIG:,} tasks (RSS growth)", ours_mem, raw_mem, "MiB", goal="<= 1.5x",
           higher_is_better=False, baseline_name="raw pycrdt")


_UNCLOSED_WRITER = """
import os, sys
from replica import Replica
replica = Replica.open(sys.argv[1], durability="lazy")
ids = [replica.tasks.create(f"t{i}").id for i in range(100)]
for i in range(int(sys.argv[2])):
    replica.tasks.update(ids[i % 100], status="completed" if i % 2 else "pending")
replica.flush()
print(replica.last_lsn, flush=True)
os._exit(0)
"""


def test_log_replay_rate(tmp_path: Path) -> None:
    """Replay of a log nobody snapshotted: the writer exits without close(), as a killed process would.

    A clean close snapshots once 1,000 records accumulated, and the reopen would replay none.
    """
    path = tmp_path / "replay"
    count = 50_000
    written = subprocess.run([sys.executable, "-c", _UNCLOSED_WRITER, str(path), str(count)], check=True,
                             capture_output=True, text=True)
    records = int(written.stdout.strip())
    start = time.perf_counter()
    reopened = Replica.open(path, durability="lazy")
    ours = records / (time.perf_counter() - start)
    try:
        assert reopened.open_report.replay.records == records
    finally:
        reopened.close()
    doc_updates: list[bytes] = []
    source = Doc()
    source.observe(lambda e: doc_updates.append(e.update))
    tasks = source.get("tasks", type=Map)
    for i in range(100):
        tasks[f"t{i}"] = Map({"status": "pending"})
    for i in range(count):
        tasks[f"t{i % 100}"]["status"] = "completed" if i % 2 else "pending"
    start = time.perf_counter()
    target = Doc()
    with target.transaction():
        for update in doc_updates:
            target.apply_update(update)
    raw = len(doc_updates) / (time.perf_counter() - start)
    report("log replay on open, records/s", ours, raw, "rec/s", goal="reported", baseline_name="raw apply")


WRITES = 10_000
"""Status updates of one task in the bytes-per-write benchmark (issue 9)."""


def _raw_bytes(records: str) -> float:
    """Document bytes per update of raw pycrdt setting one task's status and updated_at WRITES times, with
    `records` "none", "kept" (each update's write record appended to the task's slot, never removed) or
    "compacted" (the slot cut to its latest record every COMPACT_EVERY writes, as a lone writer's is)."""
    doc = Doc()
    tasks = doc.get("tasks", type=Map)
    writes = doc.get("tasks_writes", type=Map)
    writer = "bench.123456789"
    with doc.transaction():
        tasks["T-1"] = Map({"title": "x", "status": "pending", "updated_at": iso_now()})
        slot = writes[f"T-1|{writer}"] = Array()
    before = len(doc.get_update())
    for i in range(WRITES):
        with doc.transaction():
            status = "completed" if i % 2 else "pending"
            now = iso_now()
            entry = tasks["T-1"]
            entry["status"] = status
            entry["updated_at"] = now
            if records != "none":
                slot.append(_record_body("T-1", writer, i + 1, now, status))
                if records == "compacted" and (i + 1) % COMPACT_EVERY == 0:
                    del slot[: len(slot) - 1]
    return (len(doc.get_update()) - before) / WRITES


def _our_bytes(writers: int) -> tuple[float, int]:
    """Document bytes per update of `writers` in-memory replicas taking turns at `tasks.update` on one task
    (WRITES in all), each write synced to the others before the next; and the write records left."""
    replicas = [Replica.memory() for _ in range(writers)]

    def spread(source: Replica) -> None:
        for other in replicas:
            if other is not source:
                other.apply_update(source.diff(other.state_vector()))

    try:
        replicas[0].tasks.create("x", id="T-1")
        spread(replicas[0])
        before = len(replicas[0].diff())
        for i in range(WRITES):
            writer = replicas[i % writers]
            writer.tasks.update("T-1", status="completed" if i % 2 else "pending")
            if writers > 1:
                spread(writer)
        state = replicas[0].diff()
        assert all(len(r.diff()) == len(state) for r in replicas), "the replicas did not converge"
        return (len(state) - before) / WRITES, len(replicas[0].tasks.history.history("T-1"))
    finally:
        for replica in replicas:
            replica.close()


def test_bytes_per_task_write_before_and_after_compaction() -> None:
    """What one task write adds to the document over 10,000 updates (issue 9): raw pycrdt without write
    records, with them never compacted ("before") and compacted as ours are ("after"), and ours with one
    writer and with two writers taking turns. Bytes are deterministic, so one run each."""
    none, kept, compacted = (_raw_bytes(kind) for kind in ("none", "kept", "compacted"))
    ours_one, left_one = _our_bytes(1)
    ours_two, left_two = _our_bytes(2)
    report("bytes per task write, write records never compacted (raw pycrdt)", kept, none, "bytes",
           goal="reported: before compaction", higher_is_better=False, baseline_name="no records")
    report("bytes per task write, write records compacted (raw pycrdt)", compacted, none, "bytes",
           goal="reported: after compaction", higher_is_better=False, baseline_name="no records")
    report("bytes per task write, ours, one writer", ours_one, kept, "bytes",
           goal="< never compacted", higher_is_better=False, baseline_name="never compacted")
    report("bytes per task write, ours, two writers taking turns", ours_two, kept, "bytes",
           goal="< never compacted", higher_is_better=False, baseline_name="never compacted")
    note(f"bytes per task write over {WRITES:,} updates: no records {none:.1f}, records never compacted "
         f"{kept:.1f}, compacted {compacted:.1f} (raw pycrdt); ours {ours_one:.1f} with one writer "
         f"({left_one} write records left), {ours_two:.1f} with two ({left_two} left)")
    assert ours_one < kept and ours_two < kept, "write records are not being compacted"
    assert left_one <= MAX_HISTORY and left_two <= MAX_HISTORY, "more write records kept than the bound"
