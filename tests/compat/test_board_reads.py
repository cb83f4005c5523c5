"""A compat read-modify-commit reads the board once; any board change since the read still refuses the commit.

The commit skips re-reading the board object when no transaction touched the board
(tasks, nodes, edges) since the read; these check every other case is still caught.
"""

from __future__ import annotations

from pathlib import Path

from compat import Decision, Edge, Task, TransactionManager
from compat.versioned_store import entities_for

from .helpers import sync


def _commit(manager: TransactionManager, *entities: object) -> None:
    tx = manager.begin()
    for entity in entities:
        manager.write(tx, entity)
    assert manager.commit(tx).success


def test_a_native_node_write_between_read_and_commit_is_a_version_conflict(tmp_path: Path) -> None:
    with TransactionManager(tmp_path / "got") as manager:
        _commit(manager, Decision(id="D-1", title="base", rationale="r"))
        tx = manager.begin()
        decision = manager.read(tx, "D-1")
        manager.replica.graph.update_node("D-1", content="changed natively")
        decision.rationale = "new"
        manager.write(tx, decision)
        result = manager.commit(tx)
        assert not result.success and result.reason == "version_conflict"


def test_a_peers_board_write_between_read_and_commit_is_a_version_conflict(tmp_path: Path) -> None:
    with TransactionManager(tmp_path / "a") as a, TransactionManager(tmp_path / "b") as b:
        _commit(a, Task(id="T-1", title="base"))
        sync(a, b)
        tx = a.begin()
        task = a.read(tx, "T-1")
        b.replica.tasks.update("T-1", status="blocked")
        sync(a, b)
        task.title = "mine"
        a.write(tx, task)
        result = a.commit(tx)
        assert not result.success and result.reason == "version_conflict"


def test_a_board_write_elsewhere_does_not_refuse_the_commit(tmp_path: Path) -> None:
    with TransactionManager(tmp_path / "got") as manager:
        _commit(manager, Task(id="T-1", title="one"), Task(id="T-2", title="two"))
        tx = manager.begin()
        task = manager.read(tx, "T-1")
        manager.replica.tasks.update("T-2", title="two, natively")
        task.title = "one, by compat"
        manager.write(tx, task)
        assert manager.commit(tx).success
        assert manager.replica.tasks.get("T-1").title == "one, by compat"


def test_compat_edges_leave_no_native_write_records(tmp_path: Path) -> None:
    with TransactionManager(tmp_path / "got") as manager:
        _commit(manager, Task(id="T-1", title="one"), Task(id="T-2", title="two"),
                Edge(id="E-T-1-T-2-BLOCKS", source_id="T-1", target_id="T-2", edge_type="BLOCKS"))
        manager.store.delete("E-T-1-T-2-BLOCKS")
        assert manager.replica.graph.edges() == []
        assert manager.replica.graph.edge_history.record_ids() == []
        assert entities_for(manager.replica).read("E-T-1-T-2-BLOCKS") is None
