"""A closed replica lets go of everything: memory, observers, the directory lock."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

import replica.replica as replica_module
from replica import Replica


def test_a_closed_replica_is_garbage_collected(tmp_path: Path) -> None:
    replica = Replica.open(tmp_path / "data")
    replica.subscribe(lambda change: None)
    replica.tasks.create("x")
    replica.graph.add_node("n", "concept")
    replica.counters.incr("c")
    replica.collection("things").put("a", {"v": 1})
    ref = weakref.ref(replica)
    replica.close()
    del replica
    gc.collect()
    assert ref() is None, "something still holds the closed replica (an observer not dropped?)"


def test_reopen_after_close_in_the_same_process(tmp_path: Path) -> None:
    with Replica.open(tmp_path / "data") as first:
        first.counters.incr("c", 3)
    with Replica.open(tmp_path / "data") as second:
        assert second.counters.value("c") == 3


def test_a_clean_close_after_many_records_snapshots_so_the_next_open_replays_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the threshold a close snapshots; below it, it does not; either way nothing is lost."""
    monkeypatch.setattr(replica_module, "COMPACT_ON_CLOSE_RECORDS", 20)
    with Replica.open(tmp_path) as replica:
        for n in range(10):
            replica.tasks.create(f"task {n}", id=f"t{n}")
    assert not list((tmp_path / "snapshots").glob("*.snap"))
    with Replica.open(tmp_path) as replica:
        assert replica.open_report.replay.records >= 10
        for n in range(10, 20):
            replica.tasks.create(f"task {n}", id=f"t{n}")
    assert len(list((tmp_path / "snapshots").glob("*.snap"))) == 1
    with Replica.open(tmp_path) as replica:
        assert replica.open_report.replay.records == 0
        assert replica.open_report.snapshot_lsn > 0
        assert {t.id for t in replica.tasks.list()} == {f"t{n}" for n in range(20)}
