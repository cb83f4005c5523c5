"""A closed replica lets go of everything: memory, observers, the directory lock."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

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
