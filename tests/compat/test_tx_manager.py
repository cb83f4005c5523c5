"""compat.tx_manager: begin/read/write/commit/rollback on the replica (sheet section 7, test_tx_manager)."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Iterator, List
from unittest import mock

import pytest

import compat
import compat.tx_manager as tx_module
import replica.update_log as update_log
from compat.config import DurabilityMode
from compat.errors import TransactionError
from compat.locking import ProcessLock
from compat.transaction import TransactionState
from compat.tx_manager import CommitResult, Conflict, TransactionManager
from compat.types import Task
from replica import Replica


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[TransactionManager]:
    with TransactionManager(tmp_path / "got") as opened:
        yield opened


def _commit_task(manager: TransactionManager, task: Task) -> CommitResult:
    tx = manager.begin()
    manager.write(tx, task)
    return manager.commit(tx)


def _ops(manager: TransactionManager, tx_id: str) -> List[str]:
    return [entry["op"] for entry in manager.wal.replay() if entry["tx"] == tx_id]


def test_layout_and_attributes(tmp_path: Path) -> None:
    with TransactionManager(tmp_path / "got", DurabilityMode.PARANOID) as manager:
        assert manager.got_dir == tmp_path / "got" and manager.durability is DurabilityMode.PARANOID
        assert manager.store.store_dir == tmp_path / "got" / "entities"
        assert manager.store.durability is manager.wal.durability is DurabilityMode.PARANOID
        assert manager.wal.wal_dir == tmp_path / "got" / "wal"
        assert isinstance(manager.lock, ProcessLock) and manager.lock.reentrant
        assert manager.lock.lock_path == tmp_path / "got" / ".got.lock"
        assert (tmp_path / "got" / "replica.json").is_file(), "the replica lives in the got directory"
        assert compat.TransactionManager is TransactionManager and tx_module.ProcessLock is ProcessLock


def test_first_begin(manager: TransactionManager) -> None:
    tx = manager.begin()
    assert tx.id.startswith("TX-") and tx.state is TransactionState.ACTIVE
    assert tx.snapshot_version == 0 and tx.write_set == {} and tx.read_set == {}
    assert "T" in tx.started_at
    assert _ops(manager, tx.id) == ["TX_BEGIN"]


def test_a_write_is_invisible_until_commit(manager: TransactionManager) -> None:
    tx = manager.begin()
    task = Task(id="T-1", title="t")
    manager.write(tx, task)
    assert not manager.store.exists("T-1") and tx.get_write("T-1") is task
    result = manager.commit(tx)
    assert result == CommitResult(success=True, version=1, conflicts=[], reason=None)
    assert tx.state is TransactionState.COMMITTED
    assert manager.store.read("T-1").title == "t" and task.version == 2
    assert _ops(manager, tx.id) == ["TX_BEGIN", "WRITE", "TX_PREPARE", "TX_COMMIT"]
    commit_line = manager.wal.replay()[-1]
    assert commit_line["data"] == {"version": 1}


def test_rollback(manager: TransactionManager) -> None:
    _commit_task(manager, Task(id="T-0", title="seed"))
    tx = manager.begin()
    manager.read(tx, "T-0")
    manager.write(tx, Task(id="T-1", title="never"))
    manager.rollback(tx)
    assert tx.state is TransactionState.ROLLED_BACK and tx.write_set == {} and "T-0" in tx.read_set
    assert not manager.store.exists("T-1")
    assert manager.wal.replay()[-1]["op"] == "TX_ROLLBACK" and manager.wal.replay()[-1]["data"] == {
        "reason": "explicit"
    }


def test_a_concurrent_update_is_a_version_conflict(manager: TransactionManager) -> None:
    _commit_task(manager, Task(id="T-1", title="a"))
    tx = manager.begin()
    mine = manager.read(tx, "T-1")
    other = manager.begin()
    theirs = manager.read(other, "T-1")
    theirs.title = "theirs"
    manager.write(other, theirs)
    assert manager.commit(other).success
    mine.title = "mine"
    manager.write(tx, mine)
    result = manager.commit(tx)
    assert result.success is False and result.reason == "version_conflict" and result.version is None
    assert result.conflicts == [
        Conflict("T-1", 2, 3, "version_mismatch", "Expected version 2, got 3"),
    ]
    assert tx.state is TransactionState.ABORTED
    assert manager.store.read("T-1").title == "theirs"
    assert manager.wal.replay()[-1]["data"] == {"reason": "version_conflict"}


def test_a_blind_overwrite_is_checked_too(manager: TransactionManager) -> None:
    _commit_task(manager, Task(id="T-1", title="a"))
    blind = manager.begin()
    manager.write(blind, Task(id="T-1", title="blind"))
    assert blind.read_set == {"T-1": 2}, "write reads first"
    other = manager.begin()
    entity = manager.read(other, "T-1")
    entity.title = "other"
    manager.write(other, entity)
    manager.commit(other)
    assert manager.commit(blind).conflicts[0].entity_id == "T-1"


def test_two_creations_of_a_new_id_both_succeed_and_the_last_wins(manager: TransactionManager) -> None:
    first, second = manager.begin(), manager.begin()
    manager.write(first, Task(id="T-new", title="first"))
    manager.write(second, Task(id="T-new", title="second"))
    assert manager.commit(first).success and manager.commit(second).success
    assert manager.store.read("T-new").title == "second"


def test_a_new_manager_does_not_see_an_uncommitted_write(manager: TransactionManager) -> None:
    tx = manager.begin()
    manager.write(tx, Task(id="T-1", title="pending"))
    with TransactionManager(manager.got_dir) as other:
        assert not other.store.exists("T-1")
        assert other.store.replica is manager.store.replica


def test_the_lock_is_free_after_a_commit(manager: TransactionManager) -> None:
    _commit_task(manager, Task(id="T-1", title="t"))
    assert manager.lock.acquire() is True
    manager.lock.release()


def test_reads_writes_and_versions(manager: TransactionManager) -> None:
    tx = manager.begin()
    assert manager.read(tx, "T-missing") is None and tx.read_set == {}
    own = Task(id="T-own", title="own")
    manager.write(tx, own)
    assert manager.read(tx, "T-own") is own
    for n in range(3):
        manager.write(tx, Task(id=f"T-{n}", title=str(n)))
    before = manager.store.current_version()
    assert manager.commit(tx).version == before + 1 == manager.store.current_version()
    assert all(manager.store.exists(f"T-{n}") for n in range(3))
    fresh = manager.begin()
    assert manager.read(fresh, "T-0") is not manager.read(fresh, "T-0"), "every read loads a fresh object"


def test_state_rules(manager: TransactionManager) -> None:
    rolled = manager.begin()
    manager.rollback(rolled)
    result = manager.commit(rolled)
    assert result.success is False and "cannot commit" in result.reason and "rolled_back" in result.reason
    committed = manager.begin()
    assert manager.commit(committed).success, "an empty transaction commits"
    with pytest.raises(TransactionError, match="cannot rollback"):
        manager.rollback(committed)
    with pytest.raises(TransactionError, match="not active") as caught:
        manager.write(committed, Task(id="T-x", title="x"))
    assert "committed" in str(caught.value)
    assert "cannot commit" in manager.commit(committed).reason


def test_an_older_snapshot_still_reads_the_old_state(manager: TransactionManager) -> None:
    _commit_task(manager, Task(id="T-1", title="old"))
    reader = manager.begin()
    writer = manager.begin()
    entity = manager.read(writer, "T-1")
    entity.title = "new"
    manager.write(writer, entity)
    manager.commit(writer)
    assert manager.read(reader, "T-1").title == "old"
    assert manager.read(manager.begin(), "T-1").title == "new"


def test_a_write_failure_aborts_and_writes_nothing(manager: TransactionManager) -> None:
    tx = manager.begin()
    good = Task(id="T-good", title="g")
    bad = Task(id="T-bad", title="b")
    bad.status = "bogus"
    manager.write(tx, good)
    manager.write(tx, bad)
    result = manager.commit(tx)
    assert result.success is False and result.conflicts == [] and result.reason.startswith("write_failed")
    assert tx.state is TransactionState.ABORTED
    assert not manager.store.exists("T-good") and manager.store.current_version() == 0
    assert manager.wal.replay()[-1]["op"] == "TX_ABORT"
    assert manager.wal.replay()[-1]["data"]["reason"].startswith("write_failed: ")


def test_a_commit_is_one_fsync_at_most_and_the_wal_never_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TransactionManager(tmp_path / "got", DurabilityMode.PARANOID) as manager:
        tx = manager.begin()
        manager.write(tx, Task(id="T-1", title="t"))
        log_syncs: List[int] = []
        real_sync = update_log._sync_file
        monkeypatch.setattr(update_log, "_sync_file", lambda fd: (log_syncs.append(fd), real_sync(fd))[1])
        with mock.patch("os.fsync") as os_fsync:
            assert manager.commit(tx).success
        assert len(log_syncs) == 1, "one fsync of the replica log"
        assert os_fsync.call_count == 0, "the manager's WAL appends are not fsynced"
        assert manager.replica.durable_lsn >= manager.replica.last_lsn


def test_relaxed_commits_do_not_wait_for_the_disk(tmp_path: Path) -> None:
    with TransactionManager(tmp_path / "got", DurabilityMode.RELAXED) as manager:
        start = manager.replica.durable_lsn
        for n in range(5):
            assert _commit_task(manager, Task(id=f"T-{n}", title="x")).success
        assert manager.replica.durable_lsn == start


def test_threads_committing_read_modify_write_lose_no_update(manager: TransactionManager) -> None:
    _commit_task(manager, Task(id="T-count", title="0"))
    per_thread, threads = 15, 4

    def work() -> None:
        done = 0
        for _ in range(500):
            tx = manager.begin()
            task = manager.read(tx, "T-count")
            task.title = str(int(task.title) + 1)
            manager.write(tx, task)
            if manager.commit(tx).success:
                done += 1
                if done == per_thread:
                    return
        raise AssertionError("too many conflicts")

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert manager.store.read("T-count").title == str(per_thread * threads)


def test_a_commit_waits_for_the_got_lock_then_gives_up(tmp_path: Path) -> None:
    with TransactionManager(tmp_path / "got", lock_timeout=0.2) as manager:
        holder = ProcessLock(tmp_path / "got" / ".got.lock", reentrant=False)
        assert holder.acquire()
        tx = manager.begin()
        manager.write(tx, Task(id="T-1", title="t"))
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="Failed to acquire lock"):
            manager.commit(tx)
        assert 0.15 <= time.monotonic() - start < 2.0
        assert tx.state is TransactionState.ACTIVE and not manager.store.exists("T-1")
        holder.release()
        assert manager.commit(tx).success


def test_an_empty_leftover_lock_file_does_not_block(tmp_path: Path) -> None:
    (tmp_path / "got").mkdir()
    (tmp_path / "got" / ".got.lock").write_text("")
    with TransactionManager(tmp_path / "got") as manager:
        assert _commit_task(manager, Task(id="T-1", title="t")).success


def test_stale_got_lock_with_patched_kill_is_recovered(tmp_path: Path) -> None:
    (tmp_path / "got").mkdir()
    lock_path = tmp_path / "got" / ".got.lock"
    lock_path.write_text('{"pid": 88888888, "acquired_at": 1.0}')
    fd = os.open(lock_path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert tx_module.os is os
        with mock.patch("compat.tx_manager.os.kill", side_effect=OSError("no such process")) as kill:
            lock = tx_module.ProcessLock(lock_path, stale_timeout=1e12)
            assert lock.acquire() is True
            kill.assert_any_call(88888888, 0)
            lock.release()
    finally:
        os.close(fd)


def test_close_releases_the_replica(tmp_path: Path) -> None:
    manager = TransactionManager(tmp_path / "got")
    _commit_task(manager, Task(id="T-1", title="t"))
    manager.close()
    manager.close()
    with Replica.open(tmp_path / "got") as reopened:
        assert reopened.collection("got_entities").ids() == ["T-1"]
    with TransactionManager(tmp_path / "got") as again:
        assert again.store.read("T-1").title == "t" and again.store.current_version() == 1


@pytest.mark.parametrize("mode", [DurabilityMode.PARANOID, DurabilityMode.BALANCED])
def test_no_commit_holds_the_wal_lock_while_it_fsyncs(tmp_path: Path, mode: DurabilityMode) -> None:
    """Other processes' WAL lines (and so their commits) never wait for a commit's fsync: the lock a
    commit may hold from TX_PREPARE to TX_COMMIT is free whenever the replica log fsyncs."""
    free: List[bool] = []

    def observe(_seconds: float) -> None:
        fd = os.open(tmp_path / "wal" / ".wal.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free.append(True)
        except BlockingIOError:
            free.append(False)
        finally:
            os.close(fd)

    with TransactionManager(tmp_path, mode) as manager:
        log = manager.replica._log
        assert log is not None
        log.fsync_observer = observe
        for i in range(5):
            tx = manager.begin()
            manager.write(tx, Task(id=f"T-{i}", title="t"))
            assert manager.commit(tx).success
        log.fsync_observer = None
    assert len(free) >= 5 and all(free)
