"""compat.recovery: crash recovery over the replica of a got directory (sheet section 8, test_recovery)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, List

import pytest

import compat
from compat.checksums import compute_checksum
from compat.recovery import RecoveryManager, RecoveryResult, RepairResult
from compat.tx_manager import TransactionManager
from compat.types import Task
from compat.versioned_store import VersionedStore
from replica import Replica

from .helpers import peer_write, sync


@pytest.fixture
def got(tmp_path: Path) -> Path:
    return tmp_path / "got"


@pytest.fixture
def recovery(got: Path) -> Iterator[RecoveryManager]:
    with RecoveryManager(got) as opened:
        yield opened


def _commit(got: Path, *tasks: Task) -> None:
    with TransactionManager(got) as manager:
        tx = manager.begin()
        for task in tasks:
            manager.write(tx, task)
        assert manager.commit(tx).success


def _wal_lines(got: Path) -> List[dict]:
    path = got / "wal" / "current.wal"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _adopted(got: Path) -> List[dict]:
    return [line for line in _wal_lines(got) if line.get("op") == "ADOPTED"]


def _tamper_wal_line(got: Path, index: int) -> None:
    path = got / "wal" / "current.wal"
    lines = path.read_text().splitlines()
    record = json.loads(lines[index])
    record["data"]["tampered"] = True
    lines[index] = json.dumps(record, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")


def test_records_and_exports() -> None:
    result = RecoveryResult(success=True, recovered_transactions=0)
    assert (result.rolled_back, result.corrupted_entities, result.corrupted_wal_entries) == ([], [], 0)
    assert (result.orphans_detected, result.orphans_repaired, result.indexes_rebuilt) == ([], 0, False)
    result.add_action("did something")
    assert result.actions_taken == ["did something"]
    assert RepairResult(success=True, repaired_count=0).errors == []
    assert compat.RecoveryManager is RecoveryManager and compat.RecoveryResult is RecoveryResult


def test_an_uncommitted_write_is_rolled_back(got: Path) -> None:
    manager = TransactionManager(got)
    tx = manager.begin()
    manager.write(tx, Task(id="T-1", title="never committed"))
    with RecoveryManager(got) as recovery:
        assert recovery.needs_recovery()
        result = recovery.recover()
        assert result.recovered_transactions >= 1 and tx.id in result.rolled_back
        assert any("rolled back" in a.lower() or "incomplete" in a.lower() for a in result.actions_taken)
        assert not recovery.store.exists("T-1") and not recovery.needs_recovery()
    rollback = [line for line in _wal_lines(got) if line.get("tx") == tx.id][-1]
    assert rollback["op"] == "TX_ROLLBACK" and rollback["data"] == {"reason": "crash_recovery"}
    manager.close()


def test_a_transaction_whose_writes_reached_the_replica_is_completed_not_rolled_back(got: Path) -> None:
    with TransactionManager(got) as manager:
        tx = manager.begin()
        manager.write(tx, Task(id="T-1", title="landed"))
        manager.wal.log_tx_prepare(tx.id)
        result = manager.store.entities.put_batch(list(tx.write_set.values()), tx_id=tx.id)
        with RecoveryManager(got) as recovery:
            outcome = recovery.recover()
        assert outcome.rolled_back == [] and outcome.recovered_transactions == 1
        assert any("Completed transaction" in a for a in outcome.actions_taken)
        finish = [line for line in _wal_lines(got) if line.get("tx") == tx.id][-1]
        assert finish["op"] == "TX_COMMIT" and finish["data"] == {"version": result.version}
        assert manager.store.read("T-1").title == "landed"


def test_a_tampered_entity_fails_recovery(got: Path) -> None:
    _commit(got, Task(id="T-good", title="g"), Task(id="T-bad", title="b"))
    with RecoveryManager(got) as recovery:
        raw = recovery.store.entities.raw("T-bad")
        forged = {k: v for k, v in raw.items() if k != "_got"}
        forged["title"] = "forged"
        peer_write(recovery.store.replica, "T-bad", forged, checksum=raw["_got"]["checksum"])
        assert recovery.verify_store_integrity() == ["T-bad"]
        assert recovery.needs_recovery()
        result = recovery.recover()
        assert result.success is False and result.corrupted_entities == ["T-bad"]
        assert any("corrupted entit" in a.lower() and "T-bad" in a for a in result.actions_taken)


def test_a_tampered_wal_line_is_counted_but_does_not_fail(got: Path) -> None:
    _commit(got, Task(id="T-1", title="t"))
    _tamper_wal_line(got, 0)
    with RecoveryManager(got) as recovery:
        assert recovery.verify_wal_integrity() == 1 and recovery.needs_recovery()
        result = recovery.recover()
        assert result.corrupted_wal_entries == 1 and result.success is True
        assert any("corrupted wal" in a.lower() for a in result.actions_taken)


def test_a_clean_directory(got: Path) -> None:
    _commit(got, Task(id="T-1", title="t"))
    with RecoveryManager(got) as recovery:
        result = recovery.recover()
        assert result.success and result.recovered_transactions == 0 and result.rolled_back == []
        assert result.corrupted_entities == [] and result.corrupted_wal_entries == 0
        assert len(result.actions_taken) == 1
        assert "clean" in result.actions_taken[0].lower() or "no recovery" in result.actions_taken[0].lower()
        assert recovery.needs_recovery() is False


def test_needs_recovery_only_with_an_open_transaction(got: Path) -> None:
    with TransactionManager(got) as manager:
        with RecoveryManager(got) as recovery:
            assert recovery.needs_recovery() is False
            tx = manager.begin()
            assert recovery.needs_recovery() is True
            manager.rollback(tx)
            assert recovery.needs_recovery() is False


def test_orphans_and_their_repair(got: Path) -> None:
    _commit(got, Task(id="T-committed", title="c"))
    with VersionedStore(got / "entities") as store:
        store.write(Task(id="T-hand", title="written outside a transaction"))
    with RecoveryManager(got) as recovery:
        assert recovery.detect_orphaned_entities() == ["T-hand"]
        repaired = recovery.repair_orphans("delete")
        assert repaired == RepairResult(success=True, repaired_count=1, repaired_entities=["T-hand"], errors=[])
        assert not recovery.store.exists("T-hand") and recovery.store.exists("T-committed")
        assert recovery.repair_orphans("delete") == RepairResult(success=True, repaired_count=0)


def test_adoption_writes_one_adopted_line(got: Path) -> None:
    _commit(got, Task(id="T-committed", title="c"))
    with RecoveryManager(got) as recovery:
        recovery.store.write(Task(id="T-hand", title="h"))
        result = recovery.repair_orphans("adopt")
        assert result.repaired_count == 1 and result.repaired_entities == ["T-hand"]
        assert recovery.store.exists("T-hand") and recovery.detect_orphaned_entities() == []
    adopted = _adopted(got)
    assert len(adopted) == 1
    line = adopted[0]
    assert line["entity_id"] == "T-hand" and line["reason"] == "orphan_recovery"
    assert isinstance(line["timestamp"], float)
    assert line["checksum"] == compute_checksum({k: v for k, v in line.items() if k != "checksum"})


def test_a_corrupt_orphan_under_adopt_is_deleted_with_one_error(got: Path) -> None:
    with RecoveryManager(got) as recovery:
        peer_write(recovery.store.replica, "T-junk", {"id": "T-junk", "entity_type": "task"}, checksum="bogus")
        result = recovery.repair_orphans("adopt")
        assert result.repaired_count == 1 and result.repaired_entities == ["T-junk"]
        assert len(result.errors) == 1 and "corrupted" in result.errors[0]
        assert not recovery.store.exists("T-junk") and _adopted(got) == []


def test_a_corrupt_orphan_from_another_replica_is_left_in_place(got: Path) -> None:
    peer = Replica.memory()
    peer_write(peer, "T-theirs", {"id": "T-theirs", "entity_type": "task"}, checksum="bogus")
    with RecoveryManager(got) as recovery:
        recovery.store.replica.apply_update(peer.diff())
        result = recovery.repair_orphans("adopt")
        assert result.repaired_count == 0 and len(result.errors) == 1
        assert peer.replica_id in result.errors[0] and "left in place" in result.errors[0]
        assert recovery.store.exists("T-theirs") and recovery.verify_store_integrity() == ["T-theirs"]
        assert recovery.repair_orphans("delete").repaired_entities == ["T-theirs"], "an explicit delete still deletes"


def test_repair_strategies(recovery: RecoveryManager) -> None:
    with pytest.raises(ValueError, match="Invalid strategy"):
        recovery.repair_orphans("shred")
    assert recovery.repair_orphans("adopt") == RepairResult(success=True, repaired_count=0)


def test_recover_adopts_orphans_and_reports_them(got: Path) -> None:
    with VersionedStore(got / "entities") as store:
        store.write(Task(id="T-hand", title="h"))
    with RecoveryManager(got) as recovery:
        result = recovery.recover()
        assert result.orphans_detected == ["T-hand"] and result.orphans_repaired == 1 and result.success
        assert any("Adopted" in a and "T-hand" in a for a in result.actions_taken)


def test_a_fresh_clone_adopts_everything_once(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    _commit(origin, Task(id="T-1", title="one"), Task(id="T-2", title="two"))
    clone = tmp_path / "clone"
    with VersionedStore(origin / "entities") as source, VersionedStore(clone / "entities") as target:
        sync(source.replica, target.replica)
    assert not (clone / "wal").exists()
    with RecoveryManager(clone) as recovery:
        first = recovery.recover()
        assert sorted(first.orphans_detected) == ["T-1", "T-2"] and first.orphans_repaired == 2
        assert (clone / "wal" / "current.wal").is_file()
        second = recovery.recover()
        assert second.orphans_detected == [] and not any("orphan" in a.lower() for a in second.actions_taken)
        assert recovery.verify_wal_integrity() == 0, "ADOPTED lines pass the integrity check"
    assert len(_adopted(clone)) == 2


def test_an_emptied_wal_leads_to_readoption(got: Path) -> None:
    _commit(got, Task(id="T-1", title="t"))
    (got / "wal" / "current.wal").write_text("")
    with RecoveryManager(got) as recovery:
        result = recovery.recover()
        assert result.orphans_detected == ["T-1"] and result.orphans_repaired == 1
    assert [line["entity_id"] for line in _adopted(got)] == ["T-1"]


def test_orphan_detection_reads_raw_write_lines(got: Path) -> None:
    _commit(got, Task(id="T-1", title="t"))
    lines = _wal_lines(got)
    write_index = next(i for i, line in enumerate(lines) if line["op"] == "WRITE")
    _tamper_wal_line(got, write_index)
    with RecoveryManager(got) as recovery:
        assert recovery.detect_orphaned_entities() == [], "a WRITE line names its entity even with a bad checksum"


def test_rollback_incomplete_transactions_returns_the_ids(got: Path) -> None:
    with TransactionManager(got) as manager:
        first, second = manager.begin(), manager.begin()
        manager.wal.log_tx_prepare(second.id)
        with RecoveryManager(got) as recovery:
            assert recovery.rollback_incomplete_transactions() == [first.id, second.id]
            assert recovery.rollback_incomplete_transactions() == []
