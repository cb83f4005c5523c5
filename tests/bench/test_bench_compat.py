"""compat benchmarks (issues 4 and 9): commits/s per durability mode, open time, lock and GraphWAL rates.

In-process figures are printed beside the older system's figures from issue 4, labelled
"constant, measured elsewhere" (another machine and day); the single PARANOID writer is also
printed beside the disk's raw fsync rate measured in the same run. Median of 5. Commits in
a fresh process are measured against the older system in the same run, interleaved, when
AGENTSTATE_BENCH_OLD_SRC names its source, else beside issue 9's constants.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from itertools import count
from pathlib import Path
from typing import Callable, Dict

import pytest

from compat import DurabilityMode, ProcessLock, Task, TransactionManager
from compat.graph_wal import GraphWAL, NodeType

from .conftest import CONSTANT, best_of, fsync_rate, note, old_source, report, report_goal, run_commit_processes

RUNS = 5
COMMITS = 300
"""Commits per measurement (per thread with 4 threads)."""
BIG = 5000
THREADS = 4

OLD_CREATE = {DurabilityMode.PARANOID: 114.0, DurabilityMode.BALANCED: 27.0, DurabilityMode.RELAXED: 195.0}
OLD_MODIFY = {DurabilityMode.PARANOID: 93.0, DurabilityMode.BALANCED: 14.6, DurabilityMode.RELAXED: 141.0}
OLD_MODIFY_BIG_BALANCED = 1.8
OLD_OPEN_SECONDS = 0.95
OLD_LOCK_RATE = 3100.0
OLD_GRAPH_WAL_RATE = 1223.0
OLD = f"old cortical.got ({CONSTANT})"
MODES = [DurabilityMode.PARANOID, DurabilityMode.BALANCED, DurabilityMode.RELAXED]
ROUNDS = 3
OLD_NEW_PROCESS = {
    ("create", DurabilityMode.PARANOID): 94.0, ("create", DurabilityMode.BALANCED): 24.0,
    ("create", DurabilityMode.RELAXED): 157.0, ("modify", DurabilityMode.PARANOID): 85.0,
    ("modify", DurabilityMode.BALANCED): 107.0, ("modify", DurabilityMode.RELAXED): 150.0,
}
"""The older system in a fresh process, 300 commits, median of 3 (issue 9, another day on this kind of machine)."""
KINDS = {"create": "create+commit", "modify": "read-modify-commit"}

_fresh = count()


def _preload(manager: TransactionManager, entities: int) -> None:
    """Fill the store with ``entities`` tasks in one commit."""
    if entities:
        tx = manager.begin()
        for n in range(entities):
            manager.write(tx, Task(id=f"T-pre-{n:05d}", title=f"preloaded {n}", properties={"n": n}))
        assert manager.commit(tx).success


def _create_loop(manager: TransactionManager, prefix: str, commits: int) -> None:
    for n in range(commits):
        tx = manager.begin()
        manager.write(tx, Task(id=f"T-{prefix}-{n}", title="created"))
        assert manager.commit(tx).success


def _modify_loop(manager: TransactionManager, prefix: str, commits: int) -> None:
    entity_id = f"T-hot-{prefix}"
    tx = manager.begin()
    manager.write(tx, Task(id=entity_id, title="0"))
    assert manager.commit(tx).success
    done = 0
    while done < commits:
        tx = manager.begin()
        task = manager.read(tx, entity_id)
        task.title = str(int(task.title) + 1)
        manager.write(tx, task)
        if manager.commit(tx).success:
            done += 1


def _rate(manager: TransactionManager, loop: Callable[[TransactionManager, str, int], None], threads: int) -> float:
    """Commits per second of ``threads`` threads each running ``loop`` on its own entities."""
    run = next(_fresh)
    start = time.perf_counter()
    if threads == 1:
        loop(manager, f"r{run}", COMMITS)
    else:
        workers = [threading.Thread(target=loop, args=(manager, f"r{run}t{t}", COMMITS)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    return COMMITS * threads / (time.perf_counter() - start)


def _measure(tmp_path: Path, mode: DurabilityMode, loop: Callable[[TransactionManager, str, int], None],
             threads: int, preload: int) -> float:
    """Median of RUNS measurements; each run starts from a fresh store (preloaded once per run)."""
    def once() -> float:
        with TransactionManager(tmp_path / f"{mode.value}-{next(_fresh)}", mode) as manager:
            _preload(manager, preload)
            return _rate(manager, loop, threads)

    return best_of(RUNS, once)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_create_and_commit_one_task(tmp_path: Path, mode: DurabilityMode) -> None:
    single = _measure(tmp_path, mode, _create_loop, 1, 0)
    report(f"create+commit 1 Task/s, {mode.name}, 1 writer", single, OLD_CREATE[mode], "commit/s", goal=">= 10x",
           baseline_name=OLD)
    threaded = _measure(tmp_path, mode, _create_loop, THREADS, 0)
    report(f"create+commit 1 Task/s, {mode.name}, {THREADS} threads", threaded, OLD_CREATE[mode], "commit/s",
           goal=">= 10x", baseline_name=OLD)
    big = _measure(tmp_path, mode, _create_loop, 1, BIG)
    report(f"create+commit 1 Task/s, {mode.name}, 1 writer, {BIG:,} in store", big, OLD_CREATE[mode], "commit/s",
           goal=">= 10x, flat", baseline_name=OLD)
    if mode is DurabilityMode.PARANOID:
        disk = best_of(RUNS, lambda: fsync_rate(tmp_path))
        report("create+commit 1 Task/s, PARANOID, 1 writer", single, disk, "commit/s", goal=">= 0.8x",
               baseline_name="raw fsync")


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_read_modify_commit_one_task(tmp_path: Path, mode: DurabilityMode) -> None:
    single = _measure(tmp_path, mode, _modify_loop, 1, 0)
    report(f"read-modify-commit 1 Task/s, {mode.name}, 1 writer", single, OLD_MODIFY[mode], "commit/s",
           goal=">= 10x", baseline_name=OLD)
    threaded = _measure(tmp_path, mode, _modify_loop, THREADS, 0)
    report(f"read-modify-commit 1 Task/s, {mode.name}, {THREADS} threads", threaded, OLD_MODIFY[mode], "commit/s",
           goal=">= 10x", baseline_name=OLD)
    big = _measure(tmp_path, mode, _modify_loop, 1, BIG)
    old_big = OLD_MODIFY_BIG_BALANCED if mode is DurabilityMode.BALANCED else OLD_MODIFY[mode]
    report(f"read-modify-commit 1 Task/s, {mode.name}, 1 writer, {BIG:,} in store", big, old_big, "commit/s",
           goal=">= 10x, flat", baseline_name=OLD)
    if mode is DurabilityMode.PARANOID:
        disk = best_of(RUNS, lambda: fsync_rate(tmp_path))
        report("read-modify-commit 1 Task/s, PARANOID, 1 writer", single, disk, "commit/s", goal=">= 0.8x",
               baseline_name="raw fsync")


_OPEN = """
import json, sys, time
start = time.perf_counter()
from compat import TransactionManager
imported = time.perf_counter()
manager = TransactionManager(sys.argv[1])
opened = time.perf_counter()
count = len(manager.store.ids())
manager.close()
print(json.dumps({"import": imported - start, "open": opened - imported, "entities": count}))
"""


def test_open_a_manager_over_5000_entities(tmp_path: Path) -> None:
    got = tmp_path / "big"
    with TransactionManager(got, DurabilityMode.RELAXED) as manager:
        for n in range(BIG):
            tx = manager.begin()
            manager.write(tx, Task(id=f"T-{n:05d}", title=f"task {n}", properties={"n": n}))
            assert manager.commit(tx).success

    def in_process() -> float:
        start = time.perf_counter()
        with TransactionManager(got) as manager:
            assert len(manager.store.ids()) == BIG
            return time.perf_counter() - start

    def new_process() -> float:
        out = subprocess.run([sys.executable, "-c", _OPEN, str(got)], check=True, capture_output=True).stdout
        result: Dict[str, float] = json.loads(out)
        assert result["entities"] == BIG
        return result["open"]

    report(f"open a manager over {BIG:,} entities, same process", best_of(RUNS, in_process), OLD_OPEN_SECONDS, "s",
           goal="<= 0.1x", higher_is_better=False, baseline_name=OLD)
    report(f"open a manager over {BIG:,} entities, new process", best_of(RUNS, new_process), OLD_OPEN_SECONDS, "s",
           goal="<= 0.1x", higher_is_better=False, baseline_name=OLD)


def test_process_lock_acquire_release(tmp_path: Path) -> None:
    rounds = 20_000

    def once() -> float:
        lock = ProcessLock(tmp_path / f"bench-{next(_fresh)}.lock")
        start = time.perf_counter()
        for _ in range(rounds):
            lock.acquire()
            lock.release()
        return rounds / (time.perf_counter() - start)

    report("ProcessLock acquire+release/s", best_of(RUNS, once), OLD_LOCK_RATE, "op/s", goal=">= 10x",
           baseline_name=OLD)


def test_graph_wal_log_add_node(tmp_path: Path) -> None:
    entries = 1000

    def once() -> float:
        wal = GraphWAL(tmp_path / f"graph-{next(_fresh)}")
        start = time.perf_counter()
        for n in range(entries):
            wal.log_add_node(f"n{n}", NodeType.CONCEPT, f"node {n}", {"n": n})
        return entries / (time.perf_counter() - start)

    ours = best_of(RUNS, once)
    disk = best_of(RUNS, lambda: fsync_rate(tmp_path))
    report("GraphWAL log_add_node/s", ours, OLD_GRAPH_WAL_RATE, "entry/s", goal=">= 10x", baseline_name=OLD)
    report("GraphWAL log_add_node/s (one fsync each)", ours, disk, "entry/s", goal="reported",
           baseline_name="raw fsync")


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_commits_in_a_new_process_against_the_older_system(tmp_path: Path, mode: DurabilityMode, kind: str) -> None:
    """Fresh process each, COMMITS commits, ROUNDS rounds; the older system interleaved when its source is given.

    The floor (floor_worker.py: the same writes with raw pycrdt and os calls, no checks, no
    locks) is measured in the same rounds: where it is itself under 10x the older system, the
    goal is out of reach for any implementation on pycrdt on this disk, and the line says so."""
    measure_old = old_source() is not None
    ours, old, floor = [], [], []
    for round_ in range(ROUNDS):
        if measure_old:
            old.append(run_commit_processes("old", tmp_path / f"old-{round_}" / "got", mode.name, kind, 1,
                                            COMMITS).rate)
        run = run_commit_processes("ours", tmp_path / f"ours-{round_}" / "got", mode.name, kind, 1, COMMITS)
        assert run.ok == COMMITS, run.reasons
        ours.append(run.rate)
        floor.append(run_commit_processes("floor", tmp_path / f"floor-{round_}" / "got", mode.name, kind, 1,
                                          COMMITS).rate)
    rate = statistics.median(ours)
    bottom = statistics.median(floor)
    baseline = statistics.median(old) if measure_old else OLD_NEW_PROCESS[(kind, mode)]
    name = "older system, same run" if measure_old else f"older system ({CONSTANT})"
    reachable = bottom >= 10 * baseline
    ratio = report_goal(f"{KINDS[kind]}/s, {mode.name}, 1 new process", rate, baseline, "commit/s",
                        goal=">= 10x" if reachable else ">= 10x, floor below it", met=rate >= 10 * baseline,
                        baseline_name=name)
    report(f"{KINDS[kind]}/s, {mode.name}, floor (raw pycrdt, same writes)", bottom, baseline, "commit/s",
           goal="the most any implementation on pycrdt reaches here", baseline_name=name)
    note(f"{KINDS[kind]}, {mode.name}, new process: ours {rate / bottom:.2f} of the floor; 10x the older system "
         + ("lies under the floor" if reachable else f"lies above the floor ({10 * baseline:,.0f} > {bottom:,.0f}/s): "
            "out of reach on this machine"))
    if measure_old:
        note(f"{KINDS[kind]}, {mode.name}, new process, rounds (older system / ours / floor): "
             + ", ".join(f"{o:,.0f} / {u:,.0f} / {f:,.0f}" for o, u, f in zip(old, ours, floor)) + f"; {ratio:.1f}x")
        assert rate > baseline, "compat commits no faster than the older system in the same run"
