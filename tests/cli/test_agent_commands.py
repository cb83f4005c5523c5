"""The commands agents missed (issue 11 item 3): lesson add|list|search, presence set, watch, --version."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from .conftest import AGENTSTATE, Agentstate

WATCH_TIMEOUT = 120.0


def test_version(agentstate: Agentstate) -> None:
    done = agentstate("--version", data=False)
    assert done.code == 0 and done.out.startswith("agentstate ") and done.out.split()[1][0].isdigit()
    assert "--version" in agentstate("--help", data=False).out


def test_lessons_add_list_search(agentstate: Agentstate) -> None:
    first = agentstate("lesson", "add", "--context", "sync of big documents", "--failure", "peer timed out",
                       "--resolution", "split updates over 64 KiB", env={"AGENTSTATE_AGENT": "agent-7"})
    assert first.code == 0 and first.out.strip().startswith("L-")
    agentstate("lesson", "add", "--context", "tests", "--failure", "sleep then assert was flaky",
               "--resolution", "wait for the state instead", "--author", "agent-8")
    listed = agentstate("lesson", "list", "--json").json()["lessons"]
    assert [(x["author"], x["context"]) for x in listed] == [("agent-7", "sync of big documents"), ("agent-8", "tests")]
    assert [x["id"] for x in listed][0] == first.out.strip()
    assert [x["context"] for x in agentstate("lesson", "list", "--limit", "1", "--json").json()["lessons"]] == ["tests"]
    table = agentstate("lesson", "list").out
    assert "peer timed out" in table and "wait for the state instead" in table
    found = agentstate("lesson", "search", "SPLIT updates", "--json").json()
    assert found["total"] == 1 and found["lessons"][0]["author"] == "agent-7"
    assert "no lesson matches" in agentstate("lesson", "search", "nothing like this").out
    missing = agentstate("lesson", "add", "--context", "", "--failure", "f", "--resolution", "r")
    assert missing.code == 4 and "context" in missing.err


def test_presence_is_shown_by_status_with_and_without_a_daemon(agentstate: Agentstate) -> None:
    done = agentstate("presence", "set", "reviewing PR 42", "--agent", "agent-7")
    assert done.code == 0 and done.out.strip() == "agent-7: reviewing PR 42"
    agentstate("presence", "set", "writing docs", env={"AGENTSTATE_AGENT": "agent-8"})
    status = agentstate("status", "--json").json()
    assert {(p["agent"], p["working_on"]) for p in status["presence"]} == {("agent-7", "reviewing PR 42"),
                                                                          ("agent-8", "writing docs")}
    assert "presence: agent-7: reviewing PR 42" in agentstate("status").out
    proc = agentstate.serve("--listen", "127.0.0.1:0")
    try:
        sent = agentstate("presence", "set", "deploying", "--agent", "agent-7", "--json").json()
        assert sent["sent_to_peers"] is True
        status = agentstate("status", "--json").json()
        assert ("agent-7", "deploying") in {(p["agent"], p["working_on"]) for p in status["presence"]}
        assert any(entry.get("working_on") == "deploying" and entry.get("agent") == "agent-7"
                   for entry in status["mesh"]["online"])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _lines(stream: Any) -> queue.Queue[str]:
    """Every line `stream` yields, from a reader thread (ends with "" at EOF)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _until(lines: queue.Queue[str], found: Any, deadline: float) -> list[str]:
    """Lines read until one satisfies `found` (or EOF or the deadline, which fail)."""
    seen: list[str] = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        assert line, f"the stream ended; saw {seen}"
        seen.append(line)
        if found(line):
            return seen
    raise AssertionError(f"not seen before the deadline; saw {seen}")


def test_watch_prints_one_line_per_change_of_other_processes(agentstate: Agentstate, tmp_path: Path) -> None:
    agentstate("init")
    proc = subprocess.Popen([AGENTSTATE, "--data", str(agentstate.data), "watch", "--json", "--timeout",
                             str(WATCH_TIMEOUT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + WATCH_TIMEOUT
        assert proc.stderr is not None and proc.stdout is not None
        _until(_lines(proc.stderr), lambda line: line.startswith("watching"), deadline)
        out = _lines(proc.stdout)
        task_id = agentstate("task", "add", "watched task").out.strip()
        agentstate("task", "update", task_id, "--status", "blocked")
        agentstate("counter", "incr", "builds", "--by", "3")
        agentstate("lesson", "add", "--context", "c", "--failure", "f", "--resolution", "r")
        agentstate("counter", "incr", "stop")
        seen = [json.loads(line) for line in _until(out, lambda line: '"stop"' in line, deadline)]
        assert all(e["origin"] == "process" for e in seen)
        assert {"kind": "task", "id": task_id, "action": "add"}.items() <= seen[0].items()
        assert any(e["kind"] == "task" and e["field"] == "status" and e["old"] == "pending" and e["new"] == "blocked"
                   for e in seen)
        assert any(e["kind"] == "counter" and e["id"] == "builds" and e["new"] == 3 for e in seen)
        assert any(e["kind"] == "lesson" and e["action"] == "add" for e in seen)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_watch_as_text_stops_after_count(agentstate: Agentstate) -> None:
    agentstate("init")
    proc = subprocess.Popen([AGENTSTATE, "--data", str(agentstate.data), "watch", "--count", "1", "--timeout",
                             str(WATCH_TIMEOUT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        _until(_lines(proc.stderr), lambda line: line.startswith("watching"), time.monotonic() + WATCH_TIMEOUT)
        agentstate("counter", "incr", "builds")
        assert proc.wait(timeout=WATCH_TIMEOUT) == 0
        line = proc.stdout.read().strip()
        assert line.endswith("process update counter builds: 0 -> 1"), line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
