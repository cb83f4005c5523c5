"""A real `agentstate serve` with tokens, the CLI against its directory, and Debian's headless chromium."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.transport.meshkit import free_port

AGENTSTATE = str(Path(sys.executable).parent / "agentstate")
CHROMIUM = "/usr/bin/chromium"
RW_TOKEN = "board-rw-secret"
RO_TOKEN = "board-ro-secret"
T = TypeVar("T")


def chromium_path() -> str:
    """Debian's chromium (installed by .ci/run); a clear failure when it is missing, never a download."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (the board tests drive Debian's browser)")
    return CHROMIUM


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 30.0, every: float = 0.05) -> T:
    """Poll `check` until it returns something other than None/False, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / every) + 2):
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Server:
    """`agentstate serve --listen` on one data directory with a read-write and a read-only token."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `agentstate --data DIR ARGS`; a failure or a traceback fails the test."""
        done = subprocess.run([AGENTSTATE, "--data", str(self.data), *args], capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (args, done.returncode, done.stderr)
        return done

    def json(self, *args: str) -> Any:
        """A CLI command's --json output, parsed."""
        return json.loads(self.cli(*args, "--json").stdout)

    def start(self) -> Server:
        """Start serving and wait until the board page answers."""
        self.proc = subprocess.Popen(
            [AGENTSTATE, "--data", str(self.data), "serve", "--listen", f"127.0.0.1:{self.port}",
             "--token", RW_TOKEN, "--read-only-token", RO_TOKEN],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def page_answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "serve exited early"
            try:
                with urllib.request.urlopen(f"{self.base}/", timeout=2) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        wait_for(page_answers, "the board page to answer", timeout=60, every=0.1)
        return self

    def stop(self) -> None:
        """SIGTERM and wait (serve flushes and closes its peers)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def tasks(self) -> dict[str, dict[str, Any]]:
        """`task list --json` by id."""
        return {task["id"]: task for task in self.json("task", "list")["tasks"]}

    def page_url(self, token: str | None) -> str:
        """The board's URL with `?token=` (as a y-websocket client passes it)."""
        return f"{self.base}/" + (f"?token={token}" if token else "")


def artifact_dir(tmp_root: Path) -> Path:
    """Where screenshots go: $AGENTSTATE_ARTIFACTS if set, else a directory pytest keeps after the run."""
    chosen = os.environ.get("AGENTSTATE_ARTIFACTS")
    folder = Path(chosen) if chosen else tmp_root / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
