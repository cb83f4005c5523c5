"""`agentstate demo`, run as a user would: three replicas partitioned, healed, converged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

AGENTSTATE = str(Path(sys.executable).parent / "agentstate")


def run_demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed `agentstate demo` (80 columns, no colour) and return what it printed."""
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"}
    env.pop("AGENTSTATE_DATA", None)
    return subprocess.run([AGENTSTATE, "demo", "--timeout", "20", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_demo_json_converges_and_lists_the_concurrent_writes(tmp_path: Path) -> None:
    proc = run_demo("--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    outcome: dict[str, Any] = json.loads(proc.stdout)
    assert outcome["converged"] is True and outcome["converged_seconds"] < 20
    assert outcome["tasks"] == ["T-alpha", "T-beta", "T-gamma", "T-shared"]
    assert outcome["commits"] == 6
    views = outcome["replicas"]
    assert set(views) == {"alpha", "beta", "gamma"}
    assert len({view["digest"] for view in views.values()}) == 1, views
    assert all(view["tasks"] == outcome["tasks"] and view["commits"] == 6 for view in views.values())
    # alpha and beta both set the status while partitioned: listed, with one winner everywhere
    assert outcome["conflicts"] == [{
        "task": "T-shared", "field": "status",
        "written": {"alpha": "in_progress", "beta": "blocked"},
        "converged_to": outcome["merged"]["status"],
    }]
    assert outcome["merged"]["status"] in ("in_progress", "blocked")
    # fields written on one replica only are all kept
    assert outcome["merged"]["owner"] == "gamma"
    assert outcome["merged"]["description"] == "waiting on review"
    assert outcome["merged"]["tags"] == ["urgent"]
    assert not list(tmp_path.iterdir()), "the demo works in a temporary directory of its own"


def test_demo_human_output_reads_well(tmp_path: Path) -> None:
    proc = run_demo(cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    steps = ["1. partitioned", "before healing", "2. healing", "3. converged in", "after healing",
             "one field written concurrently", "T-shared after healing", "counter commits = 6 everywhere"]
    positions = [out.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert "[bold]" not in out and "[/bold]" not in out, "rich markup leaked into the text"
    after = out[out.index("after healing"):out.index("one field written concurrently")]
    shared_rows = [line for line in after.splitlines() if line.strip("│ ").startswith("T-shared")]
    assert len(shared_rows) == 1 and shared_rows[0].count("gamma") == 3, after  # same owner on all three
    assert "status" in out and "alpha=in_progress, beta=blocked" in out
    assert "Traceback" not in proc.stderr and "Error" not in out
