"""Native task conflicts through the CLI: two directories that wrote one field concurrently, merged offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

AGENTSTATE = str(Path(sys.executable).parent / "agentstate")


def run(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTATE_")}
    return subprocess.run([AGENTSTATE, "--data", str(data), *args], capture_output=True, text=True, env=env,
                          timeout=60)


def ok(data: Path, *args: str) -> str:
    done = run(data, *args)
    assert done.returncode == 0, (args, done.stderr)
    return done.stdout


def exchange(a: Path, b: Path, tmp: Path) -> None:
    ok(a, "export", str(tmp / "a.yupdate"))
    ok(b, "export", str(tmp / "b.yupdate"))
    ok(a, "import", str(tmp / "b.yupdate"))
    ok(b, "import", str(tmp / "a.yupdate"))


def test_a_concurrent_owner_change_is_listed_shown_and_settled_on_both(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    ok(a, "task", "add", "shared work", "--id", "T-1")
    ok(b, "task", "list")
    exchange(a, b, tmp_path)
    ok(a, "task", "update", "T-1", "--owner", "agent-1", "--status", "in_progress")
    ok(b, "task", "update", "T-1", "--owner", "agent-2", "--status", "in_progress")
    exchange(a, b, tmp_path)
    on_a = json.loads(ok(a, "conflicts", "list", "--json"))["conflicts"]
    on_b = json.loads(ok(b, "conflicts", "list", "--json"))["conflicts"]
    assert [c["conflict_id"] for c in on_a] == [c["conflict_id"] for c in on_b] and len(on_a) == 1
    conflict = on_a[0]
    assert conflict["entity_id"] == "T-1" and conflict["conflict_fields"] == ["owner"]
    assert conflict["ours"]["values"] == {"owner": "agent-1"} and conflict["theirs"]["values"] == {"owner": "agent-2"}
    listed = ok(a, "task", "list")
    assert "1 open" in listed
    shown = ok(a, "task", "show", "T-1")
    assert conflict["conflict_id"] in shown and "written by" in shown
    ok(a, "conflicts", "resolve", conflict["conflict_id"], "--strategy", "theirs")
    exchange(a, b, tmp_path)
    for data in (a, b):
        assert json.loads(ok(data, "conflicts", "list", "--json"))["conflicts"] == []
        assert json.loads(ok(data, "task", "show", "T-1", "--json"))["owner"] == "agent-2"
    missing = run(a, "conflicts", "show", "C-0000000000000000")
    assert missing.returncode == 3 and "Traceback" not in missing.stderr
