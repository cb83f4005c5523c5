"""A worker process for the multi-process tests: writes, reads and acknowledges on a shared directory.

Usage: python mp_worker.py DATA_DIR MODE NAME COUNT

Creates COUNT tasks `NAME-i`, increments counter `shared` after each, and after each write
reads the board back, checking that its own earlier writes are all there. Prints `ready`,
then `ack NAME-i` after each returned write, then `done`. Exits 1 with a message on any
error, so the parent sees a reader error as a failure.
"""

from __future__ import annotations

import sys

from replica import Replica


def main() -> None:
    """Write COUNT tasks and counter increments, reading back after each."""
    path, mode, name, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with Replica.open(path, durability=mode, segment_size=16 * 1024, auto_compact_bytes=10**12) as replica:
        print("ready", flush=True)
        for i in range(count):
            replica.tasks.create(f"{name} {i}", id=f"{name}-{i}")
            replica.counters.incr("shared")
            print(f"ack {name}-{i}", flush=True)
            if i % 7 == 0:
                seen = {task.id for task in replica.tasks.list()}
                missing = [f"{name}-{j}" for j in range(i + 1) if f"{name}-{j}" not in seen]
                if missing:
                    print(f"error: my own tasks are missing: {missing[:5]}", flush=True)
                    sys.exit(1)
        print("done", flush=True)


if __name__ == "__main__":
    main()
