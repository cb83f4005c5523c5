"""Shared fixtures of the compat tests: dead pids, fixture data and real child processes."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

REAL_DATA_DIR = Path(
    os.environ.get(
        "AGENTSTATE_REAL_GOT_DIR",
        str(Path(__file__).resolve().parents[1] / "fixtures" / "cortical-got-real"),
    )
)
"""A real cortical.got directory, vendored under tests/fixtures (override: ``$AGENTSTATE_REAL_GOT_DIR``)."""


def pid_is_dead(pid: int) -> bool:
    """True when no process with ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@pytest.fixture
def dead_pid() -> int:
    """A pid that belongs to no running process."""
    for candidate in (99999999, 88888888, 4194303, 999999):
        if pid_is_dead(candidate):
            return candidate
    pytest.skip("no dead pid available")


@pytest.fixture
def real_data_dir() -> Path:
    """The real cortical.got fixture directory; its absence is a failure, not a skip."""
    assert (REAL_DATA_DIR / "entities").is_dir(), f"real cortical.got fixture missing at {REAL_DATA_DIR}"
    return REAL_DATA_DIR


class Child:
    """A Python child process running a script, talking line by line over stdin/stdout."""

    def __init__(self, script: str, *args: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())
        self._lines.put("<EOF>")

    def expect(self, wanted: str, timeout: float = 20.0) -> str:
        """Wait (bounded) for the next stdout line and check it starts with ``wanted``."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            line = "<timeout>"
        if not line.startswith(wanted):
            self.kill()
            err = self.proc.stderr.read() if self.proc.stderr is not None else ""
            raise AssertionError(f"child said {line!r}, wanted {wanted!r}; stderr:\n{err}")
        return line

    def send(self, line: str) -> None:
        """Send one command line to the child."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 20.0) -> int:
        """Close stdin and wait for the exit code."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """Kill the child if it still runs, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=20)


@pytest.fixture
def spawn() -> Iterator[Callable[..., Child]]:
    """Start child processes that are killed at the end of the test."""
    children: List[Child] = []

    def start(script: str, *args: str) -> Child:
        child = Child(script, *args)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` elapses; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
