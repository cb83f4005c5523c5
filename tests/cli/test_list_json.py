"""`task list --json` piped: the replica's own JSON text, byte for byte what `json.dumps(sort_keys=True)` prints,
the same with or without a daemon, never stale, and with open conflict counts spliced into each task."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pycrdt import Doc, Map

from replica import Replica
from replica.app.listing import listing_text
from replica.errors import FieldError

from .conftest import Agentstate

USAGE = 2
PROPS = ['zeta={"b": 1, "a": [1, {"y": 2, "x": 3}]}', 'alpha="q\\"uote \\u00e9"', "open_conflicts=7"]


def canonical(text: str) -> str:
    """What the CLI printed before it printed the replica's text: json.dumps of the decoded listing, keys sorted."""
    return json.dumps(json.loads(text), sort_keys=True) + "\n"


def _add_tasks(agentstate: Agentstate) -> list[str]:
    ids = []
    for index in range(3):
        argv = ["task", "add", f"task {index}", "--owner", "o", "--tag", "b", "--tag", "a"]
        argv += [arg for prop in PROPS for arg in ("--prop", prop)] if index == 1 else []
        ids.append(agentstate(*argv).out.strip())
    agentstate("task", "update", ids[2], "--depends-on", ids[0], "--depends-on", ids[1])
    return ids


def test_piped_listing_is_canonical_and_the_same_with_or_without_a_daemon(agentstate: Agentstate) -> None:
    ids = _add_tasks(agentstate)
    here = agentstate("task", "list", "--json")
    assert here.code == 0 and here.out == canonical(here.out)
    listed = json.loads(here.out)
    assert [t["id"] for t in listed["tasks"]] == ids and listed["invalid"] == []
    task = listed["tasks"][1]
    assert task["properties"] == {"zeta": {"b": 1, "a": [1, {"y": 2, "x": 3}]}, "alpha": 'q"uote \u00e9',
                                  "open_conflicts": 7}
    assert task["open_conflicts"] == 0 and task["tags"] == ["a", "b"]
    shown = agentstate("task", "show", ids[1], "--json").json()
    assert {k: v for k, v in shown.items() if k not in ("conflicts", "last_writers")} == \
        {k: v for k, v in task.items() if k != "open_conflicts"}
    proc = agentstate.serve()
    try:
        through_daemon = agentstate("task", "list", "--json")
        assert through_daemon.code == 0 and through_daemon.out == here.out
        filtered = agentstate("task", "list", "--json", "--limit", "2", "--owner", "o")
        assert filtered.out == canonical(filtered.out)
        assert [t["id"] for t in json.loads(filtered.out)["tasks"]] == ids[:2]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert agentstate("task", "list", "--json", "--limit", "0").code == USAGE


def test_a_listing_follows_writes_by_other_processes(agentstate: Agentstate,
                                                    daemon: subprocess.Popen[bytes]) -> None:
    ids = _add_tasks(agentstate)
    first = json.loads(agentstate("task", "list", "--json").out)["tasks"]
    with Replica.open(agentstate.data) as other:
        other.tasks.update(ids[1], title="renamed elsewhere", properties={"zeta": 2})
    deadline = time.monotonic() + 30
    while True:
        listed = agentstate("task", "list", "--json")
        titles = [t["title"] for t in json.loads(listed.out)["tasks"]]
        if titles[1] == "renamed elsewhere":
            break
        assert time.monotonic() < deadline, f"the daemon never listed the other process's write: {titles}"
        time.sleep(0.05)
    again = json.loads(listed.out)["tasks"]
    assert listed.out == canonical(listed.out) and again[1]["properties"]["zeta"] == 2
    assert again[0] == first[0] and again[2] == first[2]
    agentstate("task", "rm", ids[0])
    assert [t["id"] for t in json.loads(agentstate("task", "list", "--json").out)["tasks"]] == ids[1:]


def test_open_conflict_counts_are_spliced_into_the_cached_text(tmp_path: Path) -> None:
    with Replica.open(tmp_path / "a") as a, Replica.open(tmp_path / "b") as b:
        a.tasks.create("shared", id="T-shared-0001", properties={"open_conflicts": 0, "z": [{"open_conflicts": 0}]})
        a.tasks.create("alone", id="T-alone-00001")
        b.apply_update(a.diff(None))
        before = listing_text(a, {})
        assert [t["open_conflicts"] for t in json.loads(before)["tasks"]] == [0, 0]
        a.tasks.update("T-shared-0001", owner="agent-a")
        b.tasks.update("T-shared-0001", owner="agent-b")
        a.apply_update(b.diff(a.state_vector()))
        after = listing_text(a, {})
        tasks = json.loads(after)["tasks"]
        assert after + "\n" == canonical(after)
        assert [(t["id"], t["open_conflicts"]) for t in tasks] == [("T-shared-0001", 1), ("T-alone-00001", 0)]
        assert tasks[0]["properties"] == {"open_conflicts": 0, "z": [{"open_conflicts": 0}]}, "a property, not the count"
        assert json.loads(listing_text(a, {"limit": 1}))["tasks"] == tasks[:1]
        assert json.loads(listing_text(a, {"owner": "nobody"}))["tasks"] == []


def test_filters_pick_what_the_task_board_lists(tmp_path: Path) -> None:
    with Replica.open(tmp_path / "data") as r:
        for index in range(12):
            r.tasks.create(f"t{index}", status=("pending", "blocked", "completed")[index % 3],
                           owner=("ann", "bob", None)[index % 2 if index % 5 else 2], tags=[f"g{index % 4}", "all"])
        for filters in ({"status": "blocked"}, {"owner": "ann"}, {"tag": "g1"}, {"status": "pending", "tag": "all"},
                        {"owner": "nobody"}, {"status": "completed", "owner": "bob", "tag": "g3"}):
            listed = json.loads(listing_text(r, filters))["tasks"]
            assert [t["id"] for t in listed] == [t.id for t in r.tasks.list(**filters)], filters
            limited = json.loads(listing_text(r, {**filters, "limit": 2}))["tasks"]
            assert limited == listed[:2]
        peer = Doc()
        peer.apply_update(r.diff(None))
        before = peer.get_state()
        peer.get("tasks", type=Map)["junk"] = "not a map"
        r.apply_update(peer.get_update(before), origin="peer")
        for filters in ({}, {"owner": "ann"}, {"limit": 1}):
            listed = json.loads(listing_text(r, filters))
            assert [i["id"] for i in listed["invalid"]] == ["junk"], filters
            assert [t["id"] for t in listed["tasks"]] == [t.id for t in r.tasks.list(owner=filters.get("owner"))][
                :filters.get("limit", 100)]
        with pytest.raises(FieldError, match="status"):
            listing_text(r, {"status": "sleeping"})
        with pytest.raises(FieldError, match="no such filter"):
            listing_text(r, {"colour": "red"})


def test_a_daemon_without_the_text_listing_still_lists(agentstate: Agentstate) -> None:
    ids = _add_tasks(agentstate)
    expected = agentstate("task", "list", "--json").out
    table = agentstate("task", "list").out
    older = ("import sys\nfrom replica.app import commands\ndel commands._COMMANDS['task.list.json']\n"
             "from replica.app.cli import main\nmain(sys.argv[1:])\n")
    proc = subprocess.Popen([sys.executable, "-c", older, "--data", str(agentstate.data), "serve"],
                            cwd=agentstate.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (agentstate.data / "daemon.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the older daemon did not start"
            time.sleep(0.02)
        listed = agentstate("--debug", "task", "list", "--json")
        assert listed.code == 0 and listed.out == expected and [t["id"] for t in json.loads(listed.out)["tasks"]] == ids
        assert "predates task.list.json" in listed.err and "sending task.list to the daemon" in listed.err
        assert agentstate("task", "list").out == table
    finally:
        proc.terminate()
        proc.wait(timeout=30)
