"""README.md's commands, run in order as written on a fresh directory, so the README stays true.

Every ```sh block runs line by line in one bash (so `ID=$(...)` and `&` jobs carry over),
in a working directory under tmp_path that links `.venv` to this checkout's; only `make`
lines are skipped. Each line must exit 0. The Python example runs twice.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
LINE_TIMEOUT = 120.0


def blocks(language: str) -> list[str]:
    """The fenced code blocks of README.md in `language`, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


class Shell:
    """One bash fed a line at a time; each line's output and exit status come back through a marker."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=cwd, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.count = 0

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def run(self, command: str) -> tuple[int, str]:
        """Run one line; its exit status and what it printed."""
        assert self.proc.stdin is not None
        self.count += 1
        marker = f"__readme_line_{self.count}__"
        self.proc.stdin.write(f"{command}\necho {marker}=$?\n")
        self.proc.stdin.flush()
        output: list[str] = []
        deadline = time.monotonic() + LINE_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{command!r} did not finish; so far:\n{''.join(output)}"
            line = self.lines.get(timeout=remaining)
            if line.startswith(marker + "="):
                return int(line.strip().split("=", 1)[1]), "".join(output)
            output.append(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll `predicate` until it holds (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    return work


def test_readme_shell_commands_run_as_written(workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTATE_")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    shell = Shell(workdir, env)
    ran: list[str] = []
    try:
        for block in blocks("sh"):
            for raw in block.splitlines():
                command = raw.strip()
                if not command or command.startswith(("make ", "#")):
                    continue
                if command.startswith("kill %"):
                    _wait_for(lambda: '"written on b"' in shell.run(
                        "agentstate --data a task list --json")[1], "the task written on b to reach a")
                code, output = shell.run(command)
                assert code == 0, f"README line {command!r} exited {code}:\n{output}"
                ran.append(command)
                if "--json" not in command and command.startswith("agentstate"):
                    assert "Traceback" not in output, output
        for data in ("a", "b"):
            _wait_for(lambda: not (workdir / data / "daemon.json").exists(), f"the daemon on {data} to stop")
    finally:
        shell.close()
    assert any(line.startswith("ID=$(") for line in ran) and any("serve" in line for line in ran)
    assert (workdir / ".agentstate" / "replica.json").is_file() and (workdir.parent / "other").is_dir()


def test_readme_python_example_is_idempotent_and_prints(workdir: Path) -> None:
    (example,) = blocks("python")
    outputs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", example], cwd=workdir, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
    assert "in_progress reviews: 1" in outputs[0]
    assert "in_progress reviews: 2" in outputs[1]
