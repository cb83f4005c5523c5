"""The installed `agentstate` command: `conflicts list|show|resolve` and `migrate`, directly and through a daemon."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from compat import Task, TransactionManager
from compat.checksums import compute_checksum

from ..cli.conftest import Agentstate
from .helpers import sync

NOT_FOUND, INVALID, CONFLICT = 3, 4, 7


def _conflicted(tmp_path: Path) -> Tuple[Path, str]:
    """A data directory holding one recorded conflict on T-1's title; returns it and the other side's value."""
    data, other = tmp_path / "data", tmp_path / "other"
    with TransactionManager(data) as a, TransactionManager(other) as b:
        tx = a.begin()
        a.write(tx, Task(id="T-1", title="base"))
        a.commit(tx)
        sync(a, b)
        for manager, title in ((a, "from A"), (b, "from B")):
            tx = manager.begin()
            task = manager.read(tx, "T-1")
            task.title = title
            manager.write(tx, task)
            assert manager.commit(tx).success
        sync(a, b)
    return data, "from B"


@pytest.fixture
def conflicted(tmp_path: Path) -> Agentstate:
    data, _ = _conflicted(tmp_path)
    return Agentstate(data, tmp_path)


@pytest.fixture
def served(conflicted: Agentstate) -> Iterator[Agentstate]:
    proc = conflicted.serve()
    yield conflicted
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _list(run: Agentstate) -> list:
    result = run("conflicts", "list", "--json")
    assert result.code == 0, result.err
    return result.json()["conflicts"]


def _resolve_flow(run: Agentstate) -> None:
    conflicts = _list(run)
    assert len(conflicts) == 1
    conflict = conflicts[0]
    assert conflict["entity_id"] == "T-1" and conflict["conflict_fields"] == ["title"]
    assert conflict["ours"]["values"] == {"title": "from A"} and conflict["theirs"]["values"] == {"title": "from B"}
    shown = run("conflicts", "show", conflict["conflict_id"], "--json")
    assert shown.code == 0 and shown.json()["current"]["title"] in ("from A", "from B")
    table = run("conflicts", "list")
    assert conflict["conflict_id"] in table.out and "from B" in table.out
    refused = run("conflicts", "resolve", conflict["conflict_id"], "--strategy", "merge")
    assert refused.code == CONFLICT and "Cannot auto-merge" in refused.err
    merged = run("conflicts", "resolve", conflict["conflict_id"], "--strategy", "merge", "--value", 'title="both"',
                 "--json")
    assert merged.code == 0, merged.err
    assert merged.json()["entity"]["title"] == "both" and merged.json()["already_settled"] is False
    assert _list(run) == []
    settled = run("conflicts", "list", "--all", "--json").json()["conflicts"]
    assert [c["settled"] for c in settled] == [True]
    again = run("conflicts", "resolve", conflict["conflict_id"], "--strategy", "ours")
    assert again.code == 0 and "already settled" in again.out
    assert run("conflicts", "show", "C-0000000000000000").code == NOT_FOUND
    assert run("conflicts", "resolve", conflict["conflict_id"], "--strategy", "sideways").code == 2


def test_conflicts_on_a_directory_the_command_opens(conflicted: Agentstate) -> None:
    _resolve_flow(conflicted)
    with TransactionManager(conflicted.data) as manager:
        assert manager.store.read("T-1").title == "both"


def test_conflicts_through_a_running_daemon(served: Agentstate) -> None:
    _resolve_flow(served)


def test_theirs_from_the_command_line(conflicted: Agentstate) -> None:
    conflict_id = _list(conflicted)[0]["conflict_id"]
    result = conflicted("conflicts", "resolve", conflict_id, "--strategy", "theirs")
    assert result.code == 0 and "resolved" in result.out
    with TransactionManager(conflicted.data) as manager:
        assert manager.store.read("T-1").title == "from B"


def test_migrate_twice_from_the_command_line(tmp_path: Path, real_data_dir: Path) -> None:
    run = Agentstate(tmp_path / "data", tmp_path)
    first = run("migrate", str(real_data_dir), "--json")
    assert first.code == 0, first.err
    report = first.json()
    assert report["changes"] > 0 and report["imported"]["entities"] == 449 and report["problems"] == []
    second = run("migrate", str(real_data_dir), "--json")
    assert second.code == 0 and second.json()["changes"] == 0
    human = run("migrate", str(real_data_dir))
    assert "0 change(s)" in human.out and "skipped indexes" in human.out
    listed = run("counter", "get", "got.version", "--json")
    assert listed.code == 0 and listed.json()["value"] == report["version_after"]
    assert run("migrate", str(tmp_path / "absent")).code == 2


def test_migrate_exits_8_when_a_file_could_not_be_read(tmp_path: Path) -> None:
    """A corrupt entity file is named and left out, the rest is imported, and the exit status says so
    (8, as `verify` finding problems), on every run while the file stays unreadable, served or not."""
    old = tmp_path / "old" / "entities"
    old.mkdir(parents=True)
    data = Task(id="T-1", title="old").to_dict()
    (old / "T-1.json").write_text(json.dumps({"_checksum": compute_checksum(data), "_written_at": "x", "data": data}))
    (old / "T-2.json").write_text('{"_checksum": "0", "data": {"id": "T-2"')
    run = Agentstate(tmp_path / "data", tmp_path)
    first = run("migrate", str(tmp_path / "old"), "--json")
    assert first.code == 8, first.err
    report = first.json()
    assert report["imported"]["entities"] == 1 and any("T-2.json" in p for p in report["problems"])
    human = run("migrate", str(tmp_path / "old"))
    assert human.code == 8 and "could not read" in human.out and "T-2.json" in human.out
    assert run("task", "show", "T-1", "--json").json()["title"] == "old"
    proc = run.serve()
    try:
        served = run("migrate", str(tmp_path / "old"), "--json")
        assert served.code == 8 and any("T-2.json" in p for p in served.json()["problems"]), served.err
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_migrate_into_a_served_directory(tmp_path: Path) -> None:
    old = tmp_path / "old" / "entities"
    old.mkdir(parents=True)
    data = Task(id="T-1", title="old").to_dict()
    (old / "T-1.json").write_text(json.dumps({"_checksum": compute_checksum(data), "_written_at": "x", "data": data}))
    run = Agentstate(tmp_path / "data", tmp_path)
    assert run("init").code == 0
    proc = run.serve()
    try:
        result = run("migrate", str(tmp_path / "old"), "--json")
        assert result.code == 0, result.err
        assert result.json()["imported"]["entities"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    with TransactionManager(tmp_path / "data") as manager:
        assert manager.store.read("T-1").title == "old"
