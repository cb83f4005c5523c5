"""Fixtures that run the installed `agentstate` command in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

AGENTSTATE = str(Path(sys.executable).parent / "agentstate")


@dataclass
class Result:
    """What one `agentstate` run produced."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Agentstate:
    """Runs the installed command against one data directory."""

    def __init__(self, data: Path, cwd: Path) -> None:
        self.data = data
        self.cwd = cwd

    def __call__(self, *args: str, env: dict[str, str] | None = None, data: bool = True,
                 stdin: bytes | None = None, timeout: float = 60) -> Result:
        argv = [AGENTSTATE] + (["--data", str(self.data)] if data else []) + list(args)
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run(argv, cwd=self.cwd, env=full_env, input=stdin, capture_output=True, timeout=timeout)
        result = Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
        assert "Traceback" not in result.err, result.err
        return result

    def serve(self, *args: str) -> subprocess.Popen[bytes]:
        """Start `agentstate serve` and wait until its control endpoint is published."""
        proc = subprocess.Popen([AGENTSTATE, "--data", str(self.data), "serve", *args], cwd=self.cwd,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not (self.data / "daemon.json").exists():
            if proc.poll() is not None:
                raise AssertionError(f"serve exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.02)
        return proc


@pytest.fixture
def agentstate(tmp_path: Path) -> Agentstate:
    """An `agentstate` runner on a fresh data directory under tmp_path."""
    return Agentstate(tmp_path / "data", tmp_path)


@pytest.fixture
def daemon(agentstate: Agentstate) -> Iterator[subprocess.Popen[bytes]]:
    """A running `agentstate serve` on the fixture's directory, stopped gracefully afterwards."""
    proc = agentstate.serve()
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
