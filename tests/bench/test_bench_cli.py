"""CLI latency (issue 10): `task add` and `task list --json` end to end, beside `python -c pass` in the same run.

Every figure is a p50/p99 over real processes of the installed `agentstate`, on a board of
1,000 tasks, with a daemon (`agentstate serve`) and without one. Runs are interleaved with
the floor so machine load hits both alike. The child processes may write bytecode (into
a temporary PYTHONPYCACHEPREFIX), as an installed package would have it.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import report, write_task_board

AGENTSTATE = str(Path(sys.executable).parent / "agentstate")
TASKS = 1000
RUNS = 40
DAEMON_P50_MS = 100.0
LOCAL_P50_MS = 300.0


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "AGENTSTATE_DATA")}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - start) * 1000


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _measure(commands: dict[str, list[str]], env: dict[str, str], runs: int) -> dict[str, list[float]]:
    """Interleaved timings of each command (and of `python -c pass`), after one warm-up run each."""
    floor = [sys.executable, "-c", "pass"]
    every = {"python -c pass": floor, **commands}
    for argv in every.values():
        _timed(argv, env)
    times: dict[str, list[float]] = {name: [] for name in every}
    for _ in range(runs):
        for name, argv in every.items():
            times[name].append(_timed(argv, env))
    return times


def _slower_than(times: dict[str, list[float]], limit: float) -> dict[str, float]:
    """Commands whose p50 exceeds `limit` ms (a regression guard, looser than the goal)."""
    return {name: statistics.median(values) for name, values in times.items()
            if name != "python -c pass" and statistics.median(values) > limit}


def _report(label: str, times: dict[str, list[float]], target: float) -> list[str]:
    """Print p50/p99 beside the floor; return the commands that miss the p50 target."""
    floor = times.pop("python -c pass")
    floor_p50, floor_p99 = statistics.median(floor), _p(floor, 0.99)
    missed = []
    for name, values in times.items():
        p50, p99 = statistics.median(values), _p(values, 0.99)
        report(f"CLI {name}, {label}, p50", p50, floor_p50, "ms", goal=f"<= {target:g} ms", higher_is_better=False,
               baseline_name="python -c pass")
        report(f"CLI {name}, {label}, p99", p99, floor_p99, "ms", goal="reported", higher_is_better=False,
               baseline_name="python -c pass")
        if p50 > target:
            missed.append(f"{name} ({label}): p50 {p50:.0f} ms > {target:g} ms "
                          f"(python -c pass: p50 {floor_p50:.0f} ms on this machine)")
    return missed


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-board") / "data"
    write_task_board(path, TASKS)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _env(tmp_path_factory.mktemp("pycache"))


@pytest.fixture
def daemon(board: Path, env: dict[str, str]) -> Iterator[None]:
    proc = subprocess.Popen([AGENTSTATE, "--data", str(board), "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (board / "daemon.json").exists():
        assert proc.poll() is None, "serve exited"
        assert time.monotonic() < deadline, "serve did not become ready"
        time.sleep(0.02)
    yield
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def _commands(board: Path) -> dict[str, list[str]]:
    data = ["--data", str(board)]
    return {"task add": [AGENTSTATE, *data, "task", "add", "bench"],
            "task list --json": [AGENTSTATE, *data, "task", "list", "--json"]}


def test_cli_latency_with_a_daemon(board: Path, env: dict[str, str], daemon: None) -> None:
    """Goal 100 ms p50 through a daemon: a missed goal is printed as NOT MET; 3x the goal is asserted."""
    commands = {**_commands(board), "--help": [AGENTSTATE, "--help"], "task add --help": [AGENTSTATE, "task", "add",
                                                                                        "--help"]}
    times = _measure(commands, env, RUNS)
    slow = _slower_than(times, 3 * DAEMON_P50_MS)
    missed = _report(f"daemon, {TASKS:,} tasks", times, DAEMON_P50_MS)
    for line in missed:
        print(f"\nGOAL NOT MET: {line}")
    assert not slow, f"CLI with a daemon regressed past 3x its goal: {slow}"


DEPENDENCY_FLOOR = [sys.executable, "-c", "import pycrdt; from pydantic import BaseModel, Field, TypeAdapter; pycrdt.Doc()"]
"""What every command that opens a replica pays before any code of ours: importing the two libraries
the replica stands on (pydantic's names load lazily, so the ones a model needs are named) and making
one Doc (pycrdt's first Doc imports asyncio through anyio)."""


def test_cli_latency_without_a_daemon(board: Path, env: dict[str, str]) -> None:
    """The 300 ms goal without a daemon sits on the dependency floor (importing pycrdt and pydantic and
    making one Doc, measured here in the same run): a missed goal is printed as NOT MET, and 3x is asserted."""
    assert not (board / "daemon.json").exists()
    times = _measure({**_commands(board), "dependency floor": DEPENDENCY_FLOOR}, env, RUNS // 2)
    deps = times.pop("dependency floor")
    slow = _slower_than(times, 3 * LOCAL_P50_MS)
    for name, values in times.items():
        if name != "python -c pass":
            report(f"CLI {name}, no daemon, p50 vs the dependency floor", statistics.median(values),
                   statistics.median(deps), "ms", goal="reported", higher_is_better=False,
                   baseline_name="pycrdt+pydantic")
    missed = _report(f"no daemon, {TASKS:,} tasks", times, LOCAL_P50_MS)
    for line in missed:
        print(f"\nGOAL NOT MET: {line}; importing pycrdt and pydantic and making one Doc alone: "
              f"p50 {statistics.median(deps):.0f} ms")
    assert not slow, f"CLI without a daemon regressed past 3x its goal: {slow}"
