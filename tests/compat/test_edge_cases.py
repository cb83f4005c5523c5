"""Edge cases of recovery and commits (the old test_edge_cases.py), on the replica-backed store."""

from __future__ import annotations

import json
from pathlib import Path

from compat import RecoveryManager, Task, TransactionManager, TransactionState

from .helpers import raw_junk


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


def _seed(got: Path) -> None:
    with TransactionManager(got) as manager:
        tx = manager.begin()
        manager.write(tx, Task(id="T-1", title="t"))
        assert manager.commit(tx).success


def test_a_torn_wal_tail_counts_as_corrupted(tmp_path: Path) -> None:
    _seed(tmp_path)
    _append(tmp_path / "wal" / "current.wal", '{"seq": 99, "ts": "2025-01-01T00:00:00+00:00", "tx": "TX-')
    with RecoveryManager(tmp_path) as recovery:
        assert recovery.verify_wal_integrity() == 1
        assert recovery.wal.get_incomplete_transactions() == []


def test_a_line_without_checksum_counts_as_corrupted(tmp_path: Path) -> None:
    _seed(tmp_path)
    _append(tmp_path / "wal" / "current.wal", json.dumps({"seq": 50, "ts": "x", "tx": "TX-1", "op": "TX_BEGIN",
                                                          "data": {"snapshot": 0}}) + "\n")
    with RecoveryManager(tmp_path) as recovery:
        assert recovery.verify_wal_integrity() == 1
        assert recovery.wal.get_incomplete_transactions() == [], "unsigned lines are not replayed"


def test_whitespace_lines_are_not_corruption(tmp_path: Path) -> None:
    _seed(tmp_path)
    _append(tmp_path / "wal" / "current.wal", "\n   \n\t\n")
    with RecoveryManager(tmp_path) as recovery:
        assert recovery.verify_wal_integrity() == 0


def test_a_crash_after_prepare_even_with_the_seq_assigned_to_state(tmp_path: Path) -> None:
    manager = TransactionManager(tmp_path)
    tx = manager.begin()
    manager.write(tx, Task(id="T-crash", title="never"))
    tx.state = manager.wal.log_tx_prepare(tx.id)  # type: ignore[assignment]
    manager.close()
    with TransactionManager(tmp_path) as restarted:
        assert not restarted.store.exists("T-crash")
        assert restarted.read(restarted.begin(), "T-crash") is None


def test_an_empty_lock_file_does_not_block_a_commit(tmp_path: Path) -> None:
    (tmp_path / ".got.lock").write_text("")
    with TransactionManager(tmp_path) as manager:
        tx = manager.begin()
        manager.write(tx, Task(id="T-1", title="t"))
        assert manager.commit(tx).success and tx.state is TransactionState.COMMITTED


def test_an_empty_wal_directory_recovers_cleanly(tmp_path: Path) -> None:
    (tmp_path / "wal").mkdir()
    with RecoveryManager(tmp_path) as recovery:
        result = recovery.recover()
        assert result.success and result.rolled_back == [] and result.recovered_transactions == 0


def test_a_corrupt_version_file_does_not_break_recovery(tmp_path: Path) -> None:
    (tmp_path / "entities").mkdir(parents=True)
    (tmp_path / "entities" / "_version.json").write_text("{not json")
    _seed(tmp_path)
    with RecoveryManager(tmp_path) as recovery:
        assert recovery.recover().success
        assert recovery.store.current_version() == 1


def test_recovering_twice(tmp_path: Path) -> None:
    manager = TransactionManager(tmp_path)
    manager.write(manager.begin(), Task(id="T-1", title="x"))
    with RecoveryManager(tmp_path) as recovery:
        assert recovery.recover().recovered_transactions >= 1
        assert recovery.needs_recovery() is False
        assert recovery.recover().recovered_transactions == 0
    manager.close()


def test_a_record_that_is_not_a_record_does_not_crash_the_scan(tmp_path: Path) -> None:
    _seed(tmp_path)
    with RecoveryManager(tmp_path) as recovery:
        raw_junk(recovery.store.replica, "T-junk", ["not", "a", "map"])
        assert recovery.verify_store_integrity() == ["T-junk"]
        result = recovery.recover()
        assert result.success is False and result.orphans_detected == ["T-junk"]
        assert any("corrupted" in action for action in result.actions_taken)
        assert not recovery.store.exists("T-junk") and recovery.store.read("T-1").title == "t"
