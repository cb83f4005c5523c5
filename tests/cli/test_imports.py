"""The CLI imports only what a command needs: the daemon path and help never load pycrdt, pydantic or rich."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import Agentstate

HEAVY = ("pycrdt", "pydantic", "rich", "click", "asyncio")
_PROBE = """
import json, sys
from replica.app.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.stdin.readline())))
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def imported(*argv: str, cwd: Path) -> tuple[int, list[str]]:
    """Run the CLI's main in a fresh interpreter; its exit code and the heavy packages it imported."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], cwd=cwd, input=json.dumps(HEAVY) + "\n",
                          capture_output=True, text=True, timeout=60)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    return int(report["code"] or 0), report["heavy"]


def test_daemon_path_imports_nothing_heavy(agentstate: Agentstate, daemon: subprocess.Popen[bytes]) -> None:
    data = str(agentstate.data)
    task_id = agentstate("task", "add", "probe", "--json").json()["id"]
    for argv in (["task", "add", "x"], ["task", "list", "--json"], ["task", "show", task_id],
                 ["task", "update", task_id, "--status", "blocked"], ["counter", "incr", "c"]):
        code, heavy = imported("--data", data, *argv, cwd=agentstate.cwd)
        assert code == 0 and heavy == [], f"{argv}: exit {code}, imported {heavy}"


def test_command_help_imports_nothing_heavy(tmp_path: Path) -> None:
    for argv in (["task", "add", "--help"], ["task", "list", "--help"], ["graph", "node", "--help"]):
        code, heavy = imported(*argv, cwd=tmp_path)
        assert code == 0 and heavy == [], f"{argv}: exit {code}, imported {heavy}"


def test_top_level_help_imports_nothing_heavy(tmp_path: Path) -> None:
    code, heavy = imported("--help", cwd=tmp_path)
    assert code == 0 and heavy == [], f"imported {heavy}"
