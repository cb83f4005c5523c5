"""Benchmark helpers: every figure is printed beside a baseline measured in the same run."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

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


def best_of(runs: int, fn: Callable[[], float]) -> float:
    """Median of `runs` measurements (each a rate or a duration computed by `fn`)."""
    return statistics.median(fn() for _ in range(runs))


def paired(runs: int, baseline: Callable[[], float], ours: Callable[[], float]) -> tuple[float, float]:
    """Medians of `runs` interleaved (baseline, ours) measurements, so load drifts hit both alike."""
    pairs = [(baseline(), ours()) for _ in range(runs)]
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


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
