"""`agentstate task claim|renew|release|complete|next` as an agent's shell sees them (exit codes included)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

AGENTSTATE = str(Path(sys.executable).parent / "agentstate")


def run(data: Path, *args: str, agent: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTATE_")}
    if agent is not None:
        env["AGENTSTATE_AGENT"] = agent
    return subprocess.run([AGENTSTATE, "--data", str(data), *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_claim_lost_renew_complete_and_a_stale_epoch(tmp_path: Path) -> None:
    assert run(tmp_path, "task", "add", "urgent", "--id", "T-urgent", "--priority", "high").returncode == 0
    assert run(tmp_path, "task", "add", "later", "--id", "T-later", "--priority", "low").returncode == 0
    nxt = run(tmp_path, "task", "next", "--json")
    assert nxt.returncode == 0 and json.loads(nxt.stdout)["task"]["id"] == "T-urgent"
    won = run(tmp_path, "task", "claim", "T-urgent", "--ttl", "10m", "--json", agent="alice")
    assert won.returncode == 0, won.stderr
    claim = json.loads(won.stdout)
    assert claim["state"] == "won" and claim["epoch"] == 1
    lost = run(tmp_path, "task", "claim", "T-urgent", "--agent", "bob")
    assert lost.returncode == 7 and "held by alice" in lost.stdout
    assert json.loads(run(tmp_path, "task", "next", "--json", agent="bob").stdout)["task"]["id"] == "T-later"
    assert run(tmp_path, "task", "renew", "T-urgent", "--epoch", "1", "--ttl", "1h", agent="alice").returncode == 0
    done = run(tmp_path, "task", "complete", "T-urgent", "--epoch", "1", agent="alice")
    assert done.returncode == 0 and "completed" in done.stdout
    stale = run(tmp_path, "task", "complete", "T-urgent", "--epoch", "1", agent="alice")
    assert stale.returncode == 7 and "stale" in stale.stderr and "Traceback" not in stale.stderr
    bad = run(tmp_path, "task", "claim", "T-later", "--agent", "bob", "--ttl", "forever")
    assert bad.returncode == 2 and "duration" in bad.stderr
    missing = run(tmp_path, "task", "claim", "T-nothing-here", "--agent", "bob")
    assert missing.returncode == 3
