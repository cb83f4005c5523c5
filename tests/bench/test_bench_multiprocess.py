"""Many processes, one directory (issue 8): compat commits from 1-8 real processes, and what a read pays for sharing.

Commit rates are printed beside the same run's single process, the disk's raw fsync rate
and the older system (measured in the same run, interleaved, when AGENTSTATE_BENCH_OLD_SRC
names its source; else its figures from the issue, labelled as constants).
"""

from __future__ import annotations

import select
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

from replica import Replica

from .conftest import (CONSTANT, REPO, CommitRun, fsync_rate, note, old_source, paired, report, report_goal,
                       run_commit_processes)

ROUNDS = 3
COMMITS = 150
"""Commits each process tries per run (4 processes: 600, as in the issue's measurement of the older system)."""
PROCESSES = [1, 2, 4, 8]
LIMIT = 60.0
"""Seconds one run may take before its processes stop where they are."""
OLD_4_PROCESSES = {"PARANOID": (35, 600), "BALANCED": (67, 400)}
"""The older system, 4 processes on one directory (issue 8): commits that succeeded, of those tried."""
OLD_4_RATE = 23.0
"""The top of the issue's "14-23 commits/s" for those runs (the stricter baseline)."""
READS = 10_000
CATCH_UPS = 200


def _median_run(runs: List[CommitRun]) -> CommitRun:
    """The run with the median rate (so its counts and its time belong together)."""
    return sorted(runs, key=lambda run: run.rate)[len(runs) // 2]


@pytest.mark.parametrize("mode", ["PARANOID", "BALANCED"])
def test_compat_commits_from_many_processes(tmp_path: Path, mode: str) -> None:
    old_src = old_source()
    ours: Dict[int, List[CommitRun]] = {n: [] for n in PROCESSES}
    old: List[CommitRun] = []
    disk: List[float] = []
    for round_ in range(ROUNDS):
        disk.append(fsync_rate(tmp_path))
        for n in PROCESSES:
            ours[n].append(run_commit_processes("ours", tmp_path / f"ours-{round_}-{n}" / "got", mode, "create", n,
                                                COMMITS, limit=LIMIT))
        if old_src is not None:
            old.append(run_commit_processes("old", tmp_path / f"old-{round_}" / "got", mode, "create", 4, COMMITS,
                                            limit=LIMIT))
    raw_fsync = statistics.median(disk)
    single = _median_run(ours[1])
    for n in PROCESSES:
        run = _median_run(ours[n])
        note(f"compat create+commit, {mode}, {n} process(es): {run.ok} of {run.attempts} commits succeeded "
             f"in {run.seconds:.2f} s; log fsyncs per commit {run.log_fsyncs / max(run.ok, 1):.2f}; CPU per commit "
             f"{run.cpu_seconds / max(run.ok, 1) * 1e3:.2f} ms, {run.cpu_seconds / run.seconds:.2f} cores busy"
             + (f"; failures {run.reasons}" if run.reasons else ""))
        report(f"compat create+commit/s, {mode}, {n} processes", run.rate, single.rate, "commit/s",
               goal="reported", baseline_name="1 process")
        report(f"compat create+commit/s, {mode}, {n} processes", run.rate, raw_fsync, "commit/s",
               goal="reported", baseline_name="raw fsync")
    four = _median_run(ours[4])
    want = 2.0 if mode == "BALANCED" else 1.0
    scale_met = four.rate >= want * single.rate
    report_goal(f"compat create+commit/s, {mode}, 4 processes", four.rate, single.rate, "commit/s",
                goal=f">= {want:g}x", met=scale_met, baseline_name="1 process")
    every = all(run.ok == run.attempts for runs in ours.values() for run in runs)
    report_goal(f"compat create+commit, {mode}, share succeeded, all runs",
                sum(r.ok for rs in ours.values() for r in rs), sum(r.attempts for rs in ours.values() for r in rs),
                "commits", goal="all", met=every, baseline_name="tried")
    if old:
        old_run = _median_run(old)
        note(f"older system, create+commit, {mode}, 4 processes (same run): {old_run.ok} of {old_run.attempts} "
             f"commits succeeded in {old_run.seconds:.2f} s ({old_run.attempt_rate:,.0f} tried/s); "
             f"failures {old_run.reasons}")
        old_rate, old_name = old_run.rate, "older system, same run"
    else:
        done, tried = OLD_4_PROCESSES[mode]
        note(f"older system, create+commit, {mode}, 4 processes ({CONSTANT}): {done} of {tried} commits "
             f"succeeded, the rest raised 'Failed to acquire lock', at 14-23 commits/s")
        old_rate, old_name = OLD_4_RATE, f"older system ({CONSTANT})"
    old_met = four.rate >= 20 * old_rate
    report_goal(f"compat create+commit/s, {mode}, 4 processes", four.rate, old_rate, "commit/s", goal=">= 20x",
                met=old_met, baseline_name=old_name)
    note(f"goals, {mode}: every commit succeeded {'met' if every else 'NOT MET'}; 4 processes >= {want:g}x one "
         f"process {'met' if scale_met else 'NOT MET'} ({four.rate / single.rate:.2f}x); 4 processes >= 20x the "
         f"older system {'met' if old_met else 'NOT MET'} ({four.rate / old_rate:.1f}x, {old_name})")
    assert every, {n: [(r.ok, r.attempts, r.reasons) for r in runs] for n, runs in ours.items()}
    for n in PROCESSES:
        assert _median_run(ours[n]).rate >= 0.25 * single.rate, f"{n} processes collapsed: {ours[n]}"
    if old:
        assert four.rate > _median_run(old).rate, "4 processes commit no faster than the older system's"


_IDLE_WRITER = r'''
import sys
from replica import Replica
with Replica.open(sys.argv[1]) as replica:
    print("ready", flush=True)
    for _ in range(100_000):
        command = sys.stdin.readline().strip()
        if command != "w":
            break
        replica.counters.incr("other")
        print("ok", flush=True)
'''


def _line(process: "subprocess.Popen[str]", timeout: float = 30.0) -> str:
    """One line from the process, or a failure after `timeout` seconds."""
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], timeout)
    assert readable, f"no line from the other process within {timeout} s"
    return process.stdout.readline().strip()


def _read_seconds(replica: Replica, task_id: str, reads: int) -> float:
    """Seconds per `tasks.get` over `reads` reads."""
    start = time.perf_counter()
    for _ in range(reads):
        replica.tasks.get(task_id)
    return (time.perf_counter() - start) / reads


def test_read_on_a_directory_another_process_has_open(tmp_path: Path) -> None:
    shared_dir, alone_dir = tmp_path / "shared", tmp_path / "alone"
    with Replica.open(alone_dir) as alone, Replica.open(shared_dir) as shared:
        ids = [replica.tasks.create("read me", id="T-read").id for replica in (alone, shared)]
        other = subprocess.Popen([sys.executable, "-c", _IDLE_WRITER, str(shared_dir)], cwd=str(REPO),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert other.stdin is not None
        try:
            assert _line(other) == "ready"
            # the same code runs on both sides (one word of log/HEAD compared): the least time of each
            # is its cost, which scheduling noise on a busy machine only adds to
            plain_alone, plain_shared = paired(15, lambda: _read_seconds(alone, ids[0], READS),
                                               lambda: _read_seconds(shared, ids[1], READS), pick=min)
            plain: List[float] = []
            caught_up: List[float] = []
            for _ in range(CATCH_UPS):
                plain.append(_read_seconds(shared, ids[1], 1))
                other.stdin.write("w\n")
                other.stdin.flush()
                assert _line(other) == "ok"
                caught_up.append(_read_seconds(shared, ids[1], 1))
            assert shared.counters.value("other") == CATCH_UPS
        finally:
            other.stdin.close()
            other.wait(timeout=30)
    ratio = plain_shared / plain_alone
    report_goal("tasks.get, no other process wrote (2 processes open)", plain_shared * 1e6, plain_alone * 1e6, "us",
                goal="<= 1.1x", met=ratio <= 1.1, baseline_name="directory alone")
    report("tasks.get right after another process appended 1 record", statistics.median(caught_up) * 1e6,
           statistics.median(plain) * 1e6, "us", goal="reported", baseline_name="same read, nothing new")
    assert ratio <= 1.1, f"the freshness check costs {ratio:.2f}x a read on a directory no other process touched"
