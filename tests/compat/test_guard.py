"""compat.guard: the content-hash guard of seed 004, with real files, two writers and shared snapshots."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from compat.errors import GoTError
from compat.guard import JSONL_FILE_NAME, ConcurrencyGuard, StaleFileError, hash_content
from replica import Replica

from .conftest import Child
from .helpers import sync


def test_hash_content_is_sha256() -> None:
    assert hash_content("héllo") == hashlib.sha256("héllo".encode()).hexdigest()
    assert hash_content(b"\x00\x01") == hashlib.sha256(b"\x00\x01").hexdigest()
    assert hash_content("a") == hash_content("a") != hash_content("b")
    assert len(hash_content("")) == 64


def test_the_seed_scenario_with_two_agents(tmp_path: Path) -> None:
    target = tmp_path / "IntentHookEngine.ts"
    target.write_text("original\n")
    with ConcurrencyGuard(tmp_path / "agent-a") as a, ConcurrencyGuard(tmp_path / "agent-b") as b:
        a.record_snapshot(target, target.read_text(), "turn-1", "intent-write")
        b.record_snapshot(target, target.read_text(), "turn-2", "intent-test")
        assert a.verify_before_write(target) is None
        target.write_text("A's edit\n")
        assert a.clear_snapshot(target) is True
        stale = b.verify_before_write(target)
        assert isinstance(stale, StaleFileError) and isinstance(stale, GoTError)
        info = stale.to_dict()
        assert info["code"] == stale["code"] == "STALE_FILE"
        assert info["context"]["expected_hash"] == hash_content("original\n")
        assert info["context"]["actual_hash"] == hash_content("A's edit\n")
        assert info["context"]["recorded_by"] == b.agent and info["context"]["turn_id"] == "turn-2"
        assert "Re-read" in stale.message and str(target) in stale.message
        assert b.verify_before_write(target) is not None, "refused until it re-reads"
        b.record_snapshot(target, target.read_text(), "turn-2", "intent-test")
        assert b.verify_before_write(target) is None
        target.write_text("A's edit\nB's tests\n")
        b.clear_snapshot(target)


def test_a_deleted_file_is_stale_and_an_unread_one_is_not(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("x")
    with ConcurrencyGuard(tmp_path / "agent") as guard:
        assert guard.verify_before_write(target) is None, "never read through the guard"
        assert guard.clear_snapshot(target) is False
        guard.record_snapshot(target, "x", "t1")
        target.unlink()
        stale = guard.verify_before_write(target)
        assert stale is not None and stale.context["actual_hash"] is None and "deleted" in stale.message


def test_text_read_with_universal_newlines_matches(tmp_path: Path) -> None:
    target = tmp_path / "crlf.txt"
    target.write_bytes(b"one\r\ntwo\r\n")
    with ConcurrencyGuard(tmp_path / "agent") as guard:
        guard.record_snapshot(target, target.read_text(), "t1")
        assert guard.verify_before_write(target) is None
        guard.record_snapshot(target, target.read_bytes(), "t1")
        assert guard.verify_before_write(target) is None
        target.write_bytes(b"one\r\nTWO\r\n")
        assert guard.verify_before_write(target) is not None


def test_queries_by_turn_intent_and_file(tmp_path: Path) -> None:
    one, two = tmp_path / "one.py", tmp_path / "two.py"
    with ConcurrencyGuard(tmp_path / "agent") as guard:
        guard.record_snapshot(one, "1", "turn-1", "intent-x")
        guard.record_snapshot(two, "2", "turn-1")
        guard.record_snapshot(one, "1b", "turn-2", "intent-x")
        assert [s.file_path for s in guard.get_snapshots_by_turn("turn-1")] == [str(one), str(two)]
        assert [s.turn_id for s in guard.get_snapshots_by_intent("intent-x")] == ["turn-1", "turn-2"]
        assert [s.content_hash for s in guard.get_snapshots_by_file(one)] == [hash_content("1"), hash_content("1b")]
        assert guard.get_snapshots_by_turn("turn-9") == []
        assert guard.get_snapshot(one).content_hash == hash_content("1b")


def test_snapshots_persist_as_jsonl_and_survive_a_restart(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("v1")
    with ConcurrencyGuard(tmp_path / "agent", agent="writer") as guard:
        guard.record_snapshot(target, "v1", "t1")
        guard.record_snapshot(tmp_path / "other", "o", "t1")
        guard.clear_snapshot(tmp_path / "other")
    lines = [json.loads(line) for line in (tmp_path / "agent" / JSONL_FILE_NAME).read_text().splitlines()]
    assert [line["event"] for line in lines] == ["snapshot", "snapshot", "clear"]
    assert lines[0]["content_hash"] == hash_content("v1") and lines[0]["agent"] == "writer"
    target.write_text("v2")
    with ConcurrencyGuard(tmp_path / "agent", agent="writer") as again:
        assert again.get_snapshot(tmp_path / "other") is None
        assert again.verify_before_write(target) is not None, "the open snapshot came back from the trail"
        assert len(again.get_snapshots_by_turn("t1")) == 2


def test_every_agent_sees_who_read_what(tmp_path: Path) -> None:
    target = tmp_path / "shared.py"
    with ConcurrencyGuard(tmp_path / "a", agent="agent-a") as a, ConcurrencyGuard(tmp_path / "b", agent="agent-b") as b:
        a.record_snapshot(target, "x", "turn-a", "i-1")
        b.record_snapshot(target, "x", "turn-b", "i-1")
        sync(a.replica, b.replica)
        for guard in (a, b):
            readers = [(s.agent, s.turn_id) for s in guard.get_snapshots_by_file(target)]
            assert sorted(readers) == [("agent-a", "turn-a"), ("agent-b", "turn-b")]
            assert len(guard.get_snapshots_by_intent("i-1")) == 2
        a.clear_snapshot(target)
        sync(a.replica, b.replica)
        cleared = [s for s in b.get_snapshots_by_file(target) if s.agent == "agent-a"]
        assert cleared[0].cleared_at is not None


def test_a_guard_on_a_replica_object(tmp_path: Path) -> None:
    replica = Replica.memory()
    guard = ConcurrencyGuard(replica, jsonl_path=tmp_path / "trail.jsonl")
    guard.record_snapshot(tmp_path / "f", "x", "t")
    assert guard.agent == replica.replica_id and (tmp_path / "trail.jsonl").is_file()
    assert ConcurrencyGuard(Replica.memory()).jsonl_path is None


_WRITER = """
import sys
from pathlib import Path
from compat.guard import ConcurrencyGuard
target = Path(sys.argv[2])
with ConcurrencyGuard(sys.argv[1], agent=sys.argv[3]) as guard:
    for line in sys.stdin:
        command = line.split()
        if command[0] == "read":
            guard.record_snapshot(target, target.read_bytes(), command[1])
            print("read", flush=True)
        elif command[0] == "write":
            stale = guard.verify_before_write(target)
            if stale is not None:
                print("STALE", stale.context["expected_hash"], stale.context["actual_hash"], flush=True)
                continue
            target.write_text(target.read_text() + command[1] + "\\n")
            guard.clear_snapshot(target)
            print("wrote", flush=True)
"""


def test_two_writer_processes_on_one_real_file(tmp_path: Path, spawn: Callable[..., Child]) -> None:
    target = tmp_path / "shared.txt"
    target.write_text("start\n")
    first = spawn(_WRITER, str(tmp_path / "a"), str(target), "agent-a")
    second = spawn(_WRITER, str(tmp_path / "b"), str(target), "agent-b")
    for child in (first, second):
        child.send("read turn-1")
        child.expect("read")
    first.send("write from-a")
    first.expect("wrote")
    second.send("write from-b")
    stale = second.expect("STALE").split()
    assert stale[1] == hash_content("start\n") and stale[2] == hash_content("start\nfrom-a\n")
    second.send("write from-b")
    second.expect("STALE")
    second.send("read turn-2")
    second.expect("read")
    second.send("write from-b")
    second.expect("wrote")
    assert target.read_text() == "start\nfrom-a\nfrom-b\n", "nothing lost, nothing overwritten blindly"
    assert first.finish() == 0 and second.finish() == 0
