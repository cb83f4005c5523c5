"""A writer process for the backup tests: creates tasks until told to stop, logging each acknowledged id.

Usage: python -m tests.ops.writer DATA_DIR NAME ACK_FILE STOP_FILE. An id is written to
ACK_FILE (flushed) only after `tasks.create` returned, so the file lists acknowledged writes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from replica.replica import Replica

LIMIT = 5000
"""Tasks at most, whatever happens to the stop file."""
DEADLINE = 120.0
"""Seconds at most."""


def main(data: Path, name: str, acks: Path, stop: Path) -> None:
    """Write until `stop` exists (bounded in count and time)."""
    started = time.monotonic()
    with Replica.open(data) as replica, acks.open("a") as out:
        for index in range(LIMIT):
            if stop.exists() or time.monotonic() - started > DEADLINE:
                break
            task_id = f"T-{name}-{index}"
            replica.tasks.create(f"{name} wrote {index}", id=task_id)
            out.write(task_id + "\n")
            out.flush()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
