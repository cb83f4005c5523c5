"""Benchmark helpers: every figure is printed beside a baseline measured in the same run."""

from __future__ import annotations

import json
import os
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional

import pytest

_LINES: list[str] = []


def report(name: str, ours: float, baseline: float, unit: str, *, goal: str, higher_is_better: bool = True,
           baseline_name: str = "baseline") -> float:
    """Record one benchmark line: our figure, the baseline's, their ratio and the goal."""
    ratio = ours / baseline if baseline else float("inf")
    line = (f"{name:<58} ours {ours:>12,.2f} {unit:<10} {baseline_name} {baseline:>12,.2f} {unit:<10} "
            f"ratio {ratio:>6.2f}x  (goal {goal})")
    _LINES.append(line)
    print("\n" + line)
    return ratio


def write_task_board(path: Path, tasks: int) -> None:
    """A data directory holding `tasks` tasks, written by a child process that closes it cleanly."""
    code = ("import sys\nfrom replica import Replica\nwith Replica.open(sys.argv[1], durability='lazy') as r:\n"
            "    with r.transaction():\n"
            f"        for i in range({tasks}):\n"
            "            r.tasks.create(f'task {i}', tags=['bench'], properties={'n': i})\n")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)


def best_of(runs: int, fn: Callable[[], float]) -> float:
    """Median of `runs` measurements (each a rate or a duration computed by `fn`)."""
    return statistics.median(fn() for _ in range(runs))


def paired(runs: int, baseline: Callable[[], float], ours: Callable[[], float], *,
           pick: Callable[[Iterable[float]], float] = statistics.median) -> tuple[float, float]:
    """`pick` (median, or min for a cost that noise only adds to) of `runs` interleaved (baseline, ours)
    measurements, so load drifts hit both alike."""
    pairs = [(baseline(), ours()) for _ in range(runs)]
    return pick(p[0] for p in pairs), pick(p[1] for p in pairs)


def fsync_rate(directory: Path, count: int = 300) -> float:
    """The disk's raw rate of small append + fdatasync, on the same filesystem."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        start = time.perf_counter()
        for _ in range(count):
            os.write(fd, b"x" * 64)
            os.fdatasync(fd)
        return count / (time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Repeat every figure at the end, in one table."""
    if _LINES:
        terminalreporter.section("benchmark figures (ours vs baseline, same run)")
        for line in _LINES:
            terminalreporter.write_line(line)


OLD_SRC_VARIABLE = "AGENTSTATE_BENCH_OLD_SRC"
"""Environment variable naming the older system's source tree (a `cortical` package) for same-run baselines."""
CONSTANT = "constant, measured elsewhere"
"""How a baseline that was not measured in this run is labelled."""
REPO = Path(__file__).resolve().parents[2]

_COMMIT_WORKER = r'''
import json, sys, time
system, got, mode, kind, count, name, limit = sys.argv[1:8]
count, limit = int(count), float(limit)
if system == "old":
    from cortical.got.config import DurabilityMode
    from cortical.got.tx_manager import TransactionManager
    from cortical.got.types import Task
else:
    from compat.config import DurabilityMode
    from compat.tx_manager import TransactionManager
    from compat.types import Task
manager = TransactionManager(got, DurabilityMode[mode])
hot = f"T-hot-{name}"
if kind == "modify":
    tx = manager.begin()
    manager.write(tx, Task(id=hot, title="0"))
    assert manager.commit(tx).success
log = getattr(getattr(manager, "replica", None), "_log", None)
fsyncs = getattr(log, "fsync_count", 0)
print("ready", flush=True)
sys.stdin.readline()
start = time.monotonic()
cpu = time.process_time()
deadline = start + limit
ok = attempts = 0
reasons = {}
while (attempts if kind == "create" else ok) < count and attempts < 20 * count and time.monotonic() < deadline:
    attempts += 1
    try:
        tx = manager.begin()
        if kind == "modify":
            task = manager.read(tx, hot)
            task.title = str(int(task.title) + 1)
            manager.write(tx, task)
        else:
            manager.write(tx, Task(id=f"T-{name}-{attempts}", title="created"))
        result = manager.commit(tx)
    except Exception as exc:
        reason = f"raised {type(exc).__name__}: {str(exc).split(':')[0]}"
    else:
        if result.success:
            ok += 1
            continue
        reason = str(result.reason)
    reasons[reason] = reasons.get(reason, 0) + 1
end = time.monotonic()
cpu = time.process_time() - cpu
fsyncs = getattr(log, "fsync_count", 0) - fsyncs
if hasattr(manager, "close"):
    manager.close()
print(json.dumps({"ok": ok, "attempts": attempts, "start": start, "end": end, "reasons": reasons,
                  "log_fsyncs": fsyncs, "cpu": cpu}), flush=True)
'''


@dataclass
class CommitRun:
    """What N processes committing on one directory did: commits made and tried, wall time, why some failed."""

    processes: int
    ok: int
    attempts: int
    seconds: float
    reasons: Dict[str, int]
    log_fsyncs: int
    cpu_seconds: float

    @property
    def rate(self) -> float:
        """Successful commits per second, all processes together."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def attempt_rate(self) -> float:
        """Commits tried (successful or not) per second, all processes together."""
        return self.attempts / self.seconds if self.seconds > 0 else 0.0

    @property
    def share(self) -> float:
        """The share of tried commits that succeeded."""
        return self.ok / self.attempts if self.attempts else 0.0


def old_source() -> Optional[Path]:
    """The older system's source tree named by AGENTSTATE_BENCH_OLD_SRC, or None when it is not set."""
    value = os.environ.get(OLD_SRC_VARIABLE, "").strip()
    if not value:
        return None
    path = Path(value).resolve()
    if not (path / "cortical" / "got" / "tx_manager.py").is_file():
        raise pytest.UsageError(f"{OLD_SRC_VARIABLE}={value} holds no cortical/got/tx_manager.py")
    return path


def run_commit_processes(system: str, got: Path, mode: str, kind: str, processes: int, count: int, *,
                         limit: float = 60.0) -> CommitRun:
    """Run `processes` fresh processes of `system` ("ours", "old" or "floor") committing `kind` ("create" or "modify").

    Each process opens a TransactionManager on `got` in `mode` (a DurabilityMode name), waits
    until every process is ready, then tries `count` creates (or makes `count` read-modify
    commits, retrying conflicts) within `limit` seconds; opening is not timed. Before the start, every
    dirty page on the machine is written out (`os.sync`), so that no system's timing pays for the
    writeback of the run before it (the older system leaves many unsynced files behind). "floor" runs
    floor_worker.py: the same writes made with raw pycrdt and os calls, and nothing else."""
    env = dict(os.environ)
    cwd = REPO
    script = ["-c", _COMMIT_WORKER, system]
    if system == "floor":
        script = [str(Path(__file__).with_name("floor_worker.py"))]
    elif system == "old":
        source = old_source()
        assert source is not None, f"{OLD_SRC_VARIABLE} is not set"
        env["PYTHONPATH"] = str(source)
        cwd = got.parent
    got.parent.mkdir(parents=True, exist_ok=True)
    workers = [subprocess.Popen([sys.executable, *script, str(got), mode, kind, str(count), f"p{n}", str(limit)],
                                cwd=str(cwd), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
               for n in range(processes)]
    try:
        deadline = time.monotonic() + 120
        for worker in workers:
            assert worker.stdout is not None
            readable, _, _ = select.select([worker.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = worker.stdout.readline() if readable else "(no line within 120 s)"
            if line.strip() != "ready":
                worker.kill()
                _, err = worker.communicate(timeout=30)
                raise AssertionError(f"{system} worker did not start: {line!r} {err[-2000:]}")
        os.sync()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = []
        for worker in workers:
            out, err = worker.communicate(timeout=limit + 60)
            assert worker.returncode == 0, f"{system} worker failed: {err[-2000:]}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=30)
    reasons: Dict[str, int] = {}
    for result in results:
        for reason, times in result["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + times
    return CommitRun(processes=processes, ok=sum(r["ok"] for r in results),
                     attempts=sum(r["attempts"] for r in results),
                     seconds=max(r["end"] for r in results) - min(r["start"] for r in results),
                     reasons=reasons, log_fsyncs=sum(r["log_fsyncs"] for r in results),
                     cpu_seconds=sum(r["cpu"] for r in results))


def report_goal(name: str, ours: float, baseline: float, unit: str, *, goal: str, met: Optional[bool],
                baseline_name: str = "baseline") -> float:
    """Like `report`, and say whether the goal is met (None: reported only)."""
    verdict = "reported" if met is None else ("met" if met else "NOT MET")
    return report(name, ours, baseline, unit, goal=f"{goal}: {verdict}", baseline_name=baseline_name)


def note(line: str) -> None:
    """Record a free-form benchmark line (counts, reasons, which goals are met) for the final table."""
    _LINES.append(line)
    print("\n" + line)
