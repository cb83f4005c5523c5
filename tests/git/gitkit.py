"""Real git repositories in a temporary directory, driven with the real `git` and `agentstate` binaries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrdt import Doc

from replica.app.git_state import decoded

AGENTSTATE = str(Path(sys.executable).parent / "agentstate")
STATE = ".agentstate-git/state.yupdate"
EXPORT = ".agentstate-git/state.json"


@dataclass
class Run:
    """What one command produced."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Workspace:
    """A temporary HOME with git configured only locally, and helpers to run git and agentstate in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        home = root / "home"
        home.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("GIT_", "AGENTSTATE_"))}
        self.env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0", LC_ALL="C")
        # agentstate and git-merge-agentstate on PATH, as after activating the virtualenv
        self.env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), self.env.get("PATH", "")])

    def run(self, argv: list[str], cwd: Path, *, check: bool = True, timeout: float = 120) -> Run:
        """Run a command; with `check`, fail the test with its output unless it exits 0."""
        proc = subprocess.run(argv, cwd=cwd, env=self.env, capture_output=True, timeout=timeout)
        result = Run(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
        assert "Traceback" not in result.err, result.err
        if check:
            assert result.code == 0, f"{argv} exited {result.code}: {result.out}\n{result.err}"
        return result

    def git(self, cwd: Path, *args: str, check: bool = True) -> Run:
        return self.run(["git", *args], cwd, check=check)

    def agentstate(self, cwd: Path, data: Path, *args: str, check: bool = True) -> Run:
        return self.run([AGENTSTATE, "--data", str(data), *args], cwd, check=check)

    def repo(self, name: str = "repo") -> Path:
        """A new repository with one branch `main` and an author configured in its own config."""
        path = self.root / name
        self.git(self.root, "init", "-q", "-b", "main", str(path))
        self.git(path, "config", "user.name", "Test Agent")
        self.git(path, "config", "user.email", "agent@example.invalid")
        (path / "README").write_text("a repository with agent state\n")
        self.git(path, "add", "README")
        self.git(path, "commit", "-q", "-m", "start")
        return path

    def commit_all(self, repo: Path, message: str) -> None:
        """Stage every change and commit it."""
        self.git(repo, "add", "-A")
        self.git(repo, "commit", "-q", "-m", message)

    def blob(self, repo: Path, rev: str, path: str = STATE) -> bytes:
        """A file's bytes at `rev`."""
        proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, env=self.env, capture_output=True,
                              timeout=60, check=True)
        return proc.stdout


def crdt_merge(*states: bytes) -> dict[str, Any]:
    """The document holding every state, merged in raw pycrdt (independently of the driver), as Python."""
    doc = Doc()
    for state in states:
        doc.apply_update(state)
    return decoded(doc.get_update())


def no_conflict_markers(repo: Path) -> bool:
    """True when no tracked text file holds git conflict markers."""
    for line in subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True,
                               check=True).stdout.splitlines():
        data = (repo / line).read_bytes()
        if b"<<<<<<< " in data or b">>>>>>> " in data:
            return False
    return True
