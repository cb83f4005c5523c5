"""Crash-test writer: opens a replica and writes in a loop, printing one acknowledgement per returned write.

Usage: python crash_writer.py DATA_DIR MODE ROUND

Each line is printed (and flushed) only after the write call returned, so every line the
parent reads names a write the replica acknowledged. The parent kills this process with
SIGKILL at a random moment and checks that every acknowledged write survived.

Lines: `ready`, `task ID`, `incr`, `txn ID_A ID_B`, `upd ID STATUS`, `big ID`.
"""

from __future__ import annotations

import sys

from replica import Replica

STATUSES = ("in_progress", "blocked", "completed")
MAX_WRITES = 20_000
SEGMENT_SIZE = 32 * 1024
AUTO_COMPACT_BYTES = 96 * 1024


def ack(line: str) -> None:
    """Acknowledge a write that has returned."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    """Write until killed (or MAX_WRITES), then wait for the parent to kill us."""
    path, mode, round_id = sys.argv[1], sys.argv[2], sys.argv[3]
    replica = Replica.open(path, durability=mode, segment_size=SEGMENT_SIZE,
                           auto_compact_bytes=AUTO_COMPACT_BYTES)
    ack("ready")
    last_task = ""
    for i in range(MAX_WRITES):
        step = i % 5
        if step == 0:
            last_task = f"t-{round_id}-{i}"
            replica.tasks.create(f"task {i}", id=last_task)
            ack(f"task {last_task}")
        elif step == 1:
            replica.counters.incr("acks")
            ack("incr")
        elif step == 2:
            a, b = f"ta-{round_id}-{i}", f"tb-{round_id}-{i}"
            with replica.transaction():
                replica.tasks.create("txn a", id=a)
                replica.tasks.create("txn b", id=b)
                replica.counters.incr("txn")
            ack(f"txn {a} {b}")
        elif step == 3:
            status = STATUSES[i % len(STATUSES)]
            replica.tasks.update(last_task, status=status)
            ack(f"upd {last_task} {status}")
        else:
            big = f"big-{round_id}-{i}"
            replica.tasks.create("big", id=big, description="x" * 6000 + str(i))
            ack(f"big {big}")
    sys.stdin.read()


if __name__ == "__main__":
    main()
