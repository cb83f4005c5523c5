"""A directory of the previous compat layout is upgraded when the CLI, the daemon or MCP opens it, not only compat.

The fixture tests/fixtures/compat-layout1 was written by the release before compat's
entities moved onto the board: its tasks were invisible to `agentstate task list` then.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

from compat.layout import needs_upgrade
from replica import Replica

from ..cli.conftest import Agentstate

LAYOUT1 = Path(__file__).resolve().parents[1] / "fixtures" / "compat-layout1"
TASKS = {"T-old-1": ("Old task one, renamed", "in_progress"), "T-old-2": ("Old task two", "completed")}


def _copy(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(LAYOUT1, data)
    with Replica.open(data) as replica:
        assert needs_upgrade(replica) and len(replica.tasks) == 0, "the fixture is layout 1"
    return data


def _listed(run: Agentstate) -> dict[str, tuple[str, str]]:
    result = run("task", "list", "--json")
    assert result.code == 0, result.err
    return {t["id"]: (t["title"], t["status"]) for t in result.json()["tasks"]}


def test_the_first_cli_command_upgrades_and_nothing_is_lost(tmp_path: Path) -> None:
    data = _copy(tmp_path)
    run = Agentstate(data, tmp_path)
    assert _listed(run) == TASKS
    nodes = run("graph", "node", "list", "--json").json()["nodes"]
    assert sorted((n["id"], n["type"]) for n in nodes) == [("D-old-1", "decision"), ("S-old-1", "sprint")]
    edges = run("graph", "edge", "list", "--json").json()["edges"]
    assert [(e["source"], e["type"], e["target"]) for e in edges] == [("T-old-2", "BLOCKS", "T-old-1")]
    shown = run("task", "show", "T-old-1", "--json").json()
    assert shown["properties"] == {"estimate": 3}
    with Replica.open(data) as replica:
        assert not needs_upgrade(replica)
        layout = replica.collection("got_layout")
        assert layout.get("board")["layout"] == 2 and len(layout.history("board")) == 1
    assert _listed(run) == TASKS, "a second open changes nothing"
    with Replica.open(data) as replica:
        assert len(replica.collection("got_layout").history("board")) == 1, "upgraded once"


def test_the_daemon_upgrades_when_it_opens_the_directory(tmp_path: Path) -> None:
    data = _copy(tmp_path)
    run = Agentstate(data, tmp_path)
    proc = run.serve()
    try:
        assert _listed(run) == TASKS
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    with Replica.open(data) as replica:
        assert not needs_upgrade(replica)


def test_a_board_directory_is_left_alone(tmp_path: Path) -> None:
    run = Agentstate(tmp_path / "data", tmp_path)
    assert run("task", "add", "native", "--json").code == 0
    with Replica.open(tmp_path / "data") as replica:
        assert not needs_upgrade(replica)
        assert replica.collection("got_layout").get("board") is None, "no compat entities: nothing to mark"
