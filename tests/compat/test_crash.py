"""Crash: a process committing in a loop is killed with SIGKILL, again and again.

After every restart each acknowledged commit is there; every transaction recovery rolled
back left nothing behind; and each commit was atomic (a counter entity updated in the same
transaction as a new entity always equals the number of those entities).
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from compat import RecoveryManager, TransactionManager
from compat.wal import WALManager

from .conftest import Child

COMMITTER = """
import sys
from compat import DurabilityMode, Task, TransactionManager
got, mode, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
manager = TransactionManager(got, DurabilityMode(mode))
i = start
while True:
    tx = manager.begin()
    print("begin", tx.id, i, flush=True)
    counter = manager.read(tx, "C-count")
    if counter is None:
        counter = Task(id="C-count", title="0")
    counter.title = str(int(counter.title) + 1)
    manager.write(tx, counter)
    manager.write(tx, Task(id=f"T-{i:05d}", title=str(i)))
    if manager.commit(tx).success:
        print("ack", tx.id, i, flush=True)
    i += 1
"""


def _run_until_killed(spawn: Callable[..., Child], got: Path, mode: str, start: int, acks_wanted: int,
                      delay: float, begun: Dict[str, int], acked: Dict[str, int]) -> None:
    """Let the committer acknowledge ``acks_wanted`` commits, then kill it ``delay`` s into the next transaction."""
    child = spawn(COMMITTER, str(got), mode, str(start))
    seen = 0
    killed = False
    while True:
        line = child.expect("", timeout=30)
        if line in ("<EOF>", "<timeout>"):
            break
        parts = line.split()
        if len(parts) != 3 or not parts[2].isdigit():
            assert killed, f"unexpected output {line!r}"
            continue
        kind, tx_id, number = parts
        if kind == "begin":
            begun[tx_id] = int(number)
            if seen >= acks_wanted and not killed:
                time.sleep(delay)
                child.proc.send_signal(signal.SIGKILL)
                killed = True
        elif kind == "ack":
            acked[tx_id] = int(number)
            seen += 1
    assert killed, "the committer stopped by itself"
    # A kill can cut the line being printed: such a torn line counts as not acknowledged.
    assert child.proc.wait(timeout=20) == -signal.SIGKILL


@pytest.mark.parametrize("mode", ["paranoid", "relaxed"])
def test_acknowledged_commits_survive_sigkill_and_the_rest_is_rolled_back(
    tmp_path: Path, spawn: Callable[..., Child], mode: str
) -> None:
    got = tmp_path / "got"
    rng = random.Random(f"crash-{mode}")
    begun: Dict[str, int] = {}
    acked: Dict[str, int] = {}
    for delay in (0.0, 0.0, 0.0005, 0.002, 0.0):
        start = max(begun.values(), default=-1) + 1
        _run_until_killed(spawn, got, mode, start, rng.randint(15, 60), delay, begun, acked)

    with RecoveryManager(got) as recovery:
        last = recovery.recover()
        assert recovery.needs_recovery() is False
    rolled_back: List[str] = [
        entry["tx"] for entry in WALManager(got / "wal").replay()
        if entry["op"] == "TX_ROLLBACK" and entry["data"] == {"reason": "crash_recovery"}
    ]
    assert set(last.rolled_back) <= set(rolled_back)
    assert rolled_back, "at least one kill interrupted a transaction"

    with TransactionManager(got) as manager:
        present = {entity_id for entity_id in manager.store.ids() if entity_id.startswith("T-")}
        for tx_id, number in acked.items():
            entity = manager.store.read(f"T-{number:05d}")
            assert entity is not None and entity.title == str(number), f"acknowledged {tx_id} lost"
        for tx_id in rolled_back:
            assert tx_id not in acked, "an acknowledged commit was reported rolled back"
            if tx_id in begun:
                assert f"T-{begun[tx_id]:05d}" not in present, "a rolled-back transaction left its write"
        assert present <= {f"T-{n:05d}" for n in begun.values()}, "nothing that was not written"
        assert int(manager.store.read("C-count").title) == len(present), "every commit was atomic"
        assert manager.store.current_version() == len(present)
