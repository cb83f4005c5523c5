"""Crash tests with real processes: a writer killed with SIGKILL at random moments loses no acknowledged write.

A process crash keeps everything that reached the OS, and every mode puts a write into
the OS (the memory-mapped segment) before it returns, so in every mode each write the
writer acknowledged must be there after reopen, transactions must be all-or-nothing,
counters must be exact, and reopening must never fail. Each round continues on the
directory the previous round's crash left behind.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from replica import Replica

from .crash_writer import AUTO_COMPACT_BYTES, SEGMENT_SIZE

WRITER = Path(__file__).with_name("crash_writer.py")
ROUNDS = 40 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 10
READY_TIMEOUT = 20.0


@dataclass
class Acks:
    """What the writer acknowledged in one round, parsed from its stdout."""

    tasks: list[str] = field(default_factory=list)
    incrs: int = 0
    txns: list[tuple[str, str]] = field(default_factory=list)
    updates: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Number of acknowledged writes."""
        return len(self.tasks) + self.incrs + len(self.txns) + len(self.updates)

    def add(self, line: str) -> None:
        """Record one complete acknowledgement line."""
        kind, *rest = line.split()
        if kind in ("task", "big"):
            self.tasks.append(rest[0])
        elif kind == "incr":
            self.incrs += 1
        elif kind == "txn":
            self.txns.append((rest[0], rest[1]))
        elif kind == "upd":
            self.updates[rest[0]] = rest[1]
        else:
            raise AssertionError(f"unexpected line from the writer: {line!r}")


def _pump(stream, lines: "queue.Queue[str | None]") -> None:  # type: ignore[no-untyped-def]
    """Copy complete lines from the writer's stdout to a queue; None marks EOF."""
    for raw in stream:
        if raw.endswith("\n"):  # a line cut by the kill was never acknowledged
            lines.put(raw.rstrip("\n"))
    lines.put(None)


def run_round(data_dir: Path, mode: str, round_id: int, rng: random.Random) -> tuple[Acks, int]:
    """Start a writer, kill it with SIGKILL after a random delay, return its acknowledgements."""
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(data_dir), mode, str(round_id)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    lines: queue.Queue[str | None] = queue.Queue()
    pump = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    pump.start()
    acks = Acks()
    try:
        first = lines.get(timeout=READY_TIMEOUT)
        if first != "ready":
            proc.kill()
            proc.wait(timeout=10)
            raise AssertionError(f"writer did not start: {first!r}; stderr: {proc.stderr.read() if proc.stderr else ''}")
        # Random kill moment: right after start, mid-stream, or after many writes (rolls, compactions).
        time.sleep(rng.choice([0.0, rng.uniform(0.0, 0.05), rng.uniform(0.05, 0.4)]))
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    pump.join(timeout=10)
    assert not pump.is_alive()
    while True:
        line = lines.get_nowait()
        if line is None:
            break
        acks.add(line)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in stderr, stderr
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return acks, proc.returncode


@pytest.mark.parametrize("mode", ["paranoid", "balanced", "lazy"])
def test_sigkill_never_loses_an_acknowledged_write(tmp_path: Path, mode: str) -> None:
    """ROUNDS writers killed at random moments: reopen works and holds every acknowledged write."""
    data_dir = tmp_path / "data"
    rng = random.Random(f"crash-{mode}")
    acked_incrs = 0
    acked_writes = 0
    all_tasks: set[str] = set()
    all_updates: dict[str, str] = {}
    txns_seen = 0
    for round_id in range(ROUNDS):
        acks, _ = run_round(data_dir, mode, round_id, rng)
        acked_writes += acks.total
        with Replica.open(data_dir, durability=mode, segment_size=SEGMENT_SIZE,
                          auto_compact_bytes=AUTO_COMPACT_BYTES) as r:
            present = {t.id for t in r.tasks.list()}
            assert r.invalid_records() == []
            missing = [t for t in acks.tasks if t not in present]
            assert not missing, f"round {round_id}: acknowledged tasks lost: {missing[:5]} ({r.open_report.warnings})"
            lost_txns = [pair for pair in acks.txns if not (pair[0] in present and pair[1] in present)]
            assert not lost_txns, f"round {round_id}: acknowledged transactions lost: {lost_txns[:5]}"
            all_updates.update(acks.updates)
            for task_id, status in all_updates.items():
                assert r.tasks.get(task_id).status.value == status, (round_id, task_id)
            # Transactions are atomic on recovery: both tasks or neither, and one increment each.
            halves_a = {t[3:] for t in present if t.startswith("ta-")}
            halves_b = {t[3:] for t in present if t.startswith("tb-")}
            assert halves_a == halves_b, f"round {round_id}: a transaction was half applied"
            assert r.counters.value("txn") == len(halves_a)
            assert len(halves_a) >= txns_seen + len(acks.txns)
            txns_seen = len(halves_a)
            # Counters are exact: acknowledged increments all count, at most one unacknowledged one on top.
            acks_value = r.counters.value("acks")
            acked_incrs += acks.incrs
            assert acked_incrs <= acks_value <= acked_incrs + 1, (round_id, acks_value, acked_incrs)
            acked_incrs = acks_value
            all_tasks |= set(acks.tasks)
            assert all_tasks <= present
    assert acked_writes > ROUNDS, "the writer hardly wrote anything before being killed"
    assert len(list((data_dir / "snapshots").glob("*.snap"))) >= 1, "no compaction ever ran"
