"""`agentstate git merge` (the merge driver) of two states of 10,000 tasks, 1,000 edited on both sides.

Beside it, in the same run: applying both states to a fresh Doc in raw pycrdt (the floor
of any merge) and `merge_states` in-process (the driver without its process start). Bytes
of each side and of the merge are printed.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pycrdt import Doc

from replica import Replica
from replica.app.git_state import decoded, merge_states

from .conftest import note, report

pytestmark = pytest.mark.bench

AGENTSTATE = str(Path(sys.executable).parent / "agentstate")
TASKS = 10_000
EDITED = 1_000
RUNS = 5
GUARD = 30.0
"""Regression guard: the driver may take at most this many times raw pycrdt's apply, plus 2 s for the process."""


def _side(base: bytes, label: str) -> bytes:
    """The base state with EDITED of its tasks retitled and reprioritised by a replica of its own."""
    replica = Replica.memory(f"r-{label}")
    replica.apply_update(base)
    with replica.transaction():
        for i in range(EDITED):
            replica.tasks.update(f"T-{i:05d}", title=f"task {i} as {label} sees it",
                                 priority="high" if label == "a" else "low")
    return replica.diff(None)


def _states() -> tuple[bytes, bytes]:
    base = Replica.memory("r-base")
    with base.transaction():
        for i in range(TASKS):
            base.tasks.create(f"task {i}", id=f"T-{i:05d}", tags=["bench"], properties={"n": i})
    state = base.diff(None)
    return _side(state, "a"), _side(state, "b")


def _raw(a: bytes, b: bytes) -> float:
    start = time.perf_counter()
    doc = Doc()
    doc.apply_update(a)
    doc.apply_update(b)
    doc.get_update()
    return time.perf_counter() - start


def _in_process(a: bytes, b: bytes) -> float:
    start = time.perf_counter()
    merge_states(a, b)
    return time.perf_counter() - start


def _driver(directory: Path, a: bytes, b: bytes) -> float:
    ours, theirs, base = directory / "A", directory / "B", directory / "O"
    ours.write_bytes(a)
    theirs.write_bytes(b)
    base.write_bytes(b"")
    start = time.perf_counter()
    subprocess.run([AGENTSTATE, "git", "merge", str(base), str(ours), str(theirs), ".agentstate-git/state.yupdate"],
                   cwd=directory, check=True)
    return time.perf_counter() - start


def test_git_merge_driver_of_two_large_states(tmp_path: Path) -> None:
    a, b = _states()
    raw, inproc, driver = [], [], []
    for _ in range(RUNS):
        raw.append(_raw(a, b))
        inproc.append(_in_process(a, b))
        driver.append(_driver(tmp_path, a, b))
    merged = (tmp_path / "A").read_bytes()
    doc = Doc()
    doc.apply_update(a)
    doc.apply_update(b)
    assert decoded(merged) == decoded(doc.get_update())
    floor = statistics.median(raw)
    report(f"git merge driver, 2 x {TASKS:,} tasks ({EDITED:,} edited on both), process", statistics.median(driver),
           floor, "s", goal="reported", higher_is_better=False, baseline_name="raw pycrdt")
    report("git merge_states in-process, same states", statistics.median(inproc), floor, "s", goal="reported",
           higher_is_better=False, baseline_name="raw pycrdt")
    note(f"git merge bytes: ours {len(a):,}, theirs {len(b):,}, merged {len(merged):,} "
         f"(raw pycrdt's merge {len(doc.get_update()):,})")
    assert statistics.median(driver) < GUARD * floor + 2.0
