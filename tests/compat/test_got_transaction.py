"""Integration: whole transactions through the manager, as tests/integration/test_got_transaction.py checks them."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from compat import Decision, Edge, RecoveryManager, Task, TransactionManager, TransactionState


@pytest.fixture
def got(tmp_path: Path) -> Path:
    return tmp_path / ".got"


@pytest.fixture
def manager(got: Path) -> Iterator[TransactionManager]:
    with TransactionManager(got) as opened:
        yield opened


def test_commit_and_read_back(manager: TransactionManager) -> None:
    tx = manager.begin()
    assert tx.snapshot_version == 0
    manager.write(tx, Task(id="T-A", title="first"))
    result = manager.commit(tx)
    assert result.success and result.version == 1 and tx.state is TransactionState.COMMITTED
    nxt = manager.begin()
    assert nxt.snapshot_version == 1
    task = manager.read(nxt, "T-A")
    assert task.title == "first" and task.version == 2


def test_rollback_leaves_nothing(manager: TransactionManager) -> None:
    tx = manager.begin()
    manager.write(tx, Task(id="T-A", title="x"))
    manager.rollback(tx)
    assert tx.write_set == {}
    assert manager.read(manager.begin(), "T-A") is None


def test_conflict_between_two_transactions(manager: TransactionManager) -> None:
    setup = manager.begin()
    manager.write(setup, Task(id="T-A", title="base"))
    manager.commit(setup)
    stale, fresh = manager.begin(), manager.begin()
    stale_task = manager.read(stale, "T-A")
    assert stale.read_set["T-A"] == 2
    fresh_task = manager.read(fresh, "T-A")
    fresh_task.status = "in_progress"
    manager.write(fresh, fresh_task)
    assert manager.commit(fresh).version == 2
    stale_task.status = "blocked"
    manager.write(stale, stale_task)
    result = manager.commit(stale)
    assert result.success is False and result.reason == "version_conflict"
    assert len(result.conflicts) == 1
    conflict = result.conflicts[0]
    assert (conflict.entity_id, conflict.expected_version, conflict.actual_version) == ("T-A", 2, 3)
    assert stale.state is TransactionState.ABORTED
    assert manager.store.read("T-A").status == "in_progress"


def test_an_abandoned_manager_leaves_nothing(got: Path) -> None:
    abandoned = TransactionManager(got)
    tx = abandoned.begin()
    abandoned.write(tx, Task(id="T-A", title="abandoned"))
    with TransactionManager(got) as fresh:
        assert fresh.read(fresh.begin(), "T-A") is None
        assert fresh.recover().success
    abandoned.close()


def test_a_crash_after_prepare_leaves_nothing(got: Path) -> None:
    crashed = TransactionManager(got)
    tx = crashed.begin()
    crashed.write(tx, Task(id="T-A", title="prepared only"))
    crashed.wal.log_tx_prepare(tx.id)
    crashed.close()
    with TransactionManager(got) as fresh:
        assert not fresh.store.exists("T-A")
        assert fresh.recover().rolled_back == []
    with RecoveryManager(got) as recovery:
        assert recovery.needs_recovery() is False


def test_read_your_own_writes_and_nothing_after_rollback(manager: TransactionManager) -> None:
    tx = manager.begin()
    task = Task(id="T-A", title="mine")
    manager.write(tx, task)
    assert manager.read(tx, "T-A") is task
    manager.rollback(tx)
    assert manager.read(manager.begin(), "T-A") is None


def test_an_older_transaction_sees_an_entity_created_after_it(manager: TransactionManager) -> None:
    setup = manager.begin()
    manager.write(setup, Task(id="T-A", title="a"))
    manager.commit(setup)
    older, newer = manager.begin(), manager.begin()
    assert older.snapshot_version == newer.snapshot_version == 1
    manager.write(newer, Task(id="T-B", title="b"))
    assert manager.commit(newer).version == older.snapshot_version + 1
    seen = manager.read(older, "T-B")
    assert seen is not None and seen.title == "b", "the snapshot quirk the old integration test asserts"


def test_mixed_entity_types_commit_together(manager: TransactionManager) -> None:
    tx = manager.begin()
    edge = Edge(id="", source_id="T-A", target_id="D-A", edge_type="MOTIVATES")
    manager.write(tx, Task(id="T-A", title="t"))
    manager.write(tx, Decision(id="D-A", title="d", rationale="r"))
    manager.write(tx, edge)
    assert manager.commit(tx).success
    reader = manager.begin()
    assert edge.id == "E-T-A-D-A-MOTIVATES"
    found = manager.read(reader, edge.id)
    assert isinstance(found, Edge) and found.id == edge.id and found.edge_type == "MOTIVATES"
    assert isinstance(manager.read(reader, "D-A"), Decision)


def test_a_committed_empty_transaction_is_final(manager: TransactionManager) -> None:
    tx = manager.begin()
    assert manager.commit(tx).success
    with pytest.raises(Exception, match="not active"):
        manager.write(tx, Task(id="T-A", title="late"))
    with pytest.raises(Exception, match="cannot rollback"):
        manager.rollback(tx)
    assert "cannot commit" in manager.commit(tx).reason


def test_entity_versions_after_create_and_update(manager: TransactionManager) -> None:
    tx = manager.begin()
    manager.write(tx, Task(id="T-A", title="a"))
    manager.commit(tx)
    update = manager.begin()
    task = manager.read(update, "T-A")
    assert task.version == 2
    task.title = "b"
    manager.write(update, task)
    manager.commit(update)
    assert manager.read(manager.begin(), "T-A").version == 3
