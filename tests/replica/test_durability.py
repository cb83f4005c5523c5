"""Durability modes, group commit, compaction, the data-directory lock and writer incarnations."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import replica.update_log as update_log
from replica import Durability, Replica, ReplicaError
from replica.statevector import decode_state_vector

from .helpers import doc_roots, segments, task_ids, wait_until



def write_some(r: Replica, prefix: str, count: int) -> None:
    """A mix of plain writes: task creates and updates, counter increments, graph nodes."""
    for i in range(count):
        r.tasks.create(f"{prefix} {i}", id=f"{prefix}{i}")
        r.tasks.update(f"{prefix}{i}", status="in_progress")
        r.counters.incr("writes")
        r.graph.add_node(f"{prefix}n{i}", "idea")


# -- PARANOID ---------------------------------------------------------------------------


def test_paranoid_fsyncs_every_write_before_it_returns(tmp_path: Path) -> None:
    """In PARANOID mode the log is durable up to the newest record whenever a write returns."""
    with Replica.open(tmp_path, durability="paranoid") as r:
        assert r.durability is Durability.PARANOID
        start = r._log.fsync_count  # type: ignore[union-attr]
        writes = [
            lambda i: r.tasks.create("x", id=f"t{i}"),
            lambda i: r.tasks.update(f"t{i}", title="y"),
            lambda i: r.counters.incr("c", i + 1),
            lambda i: r.graph.add_node(f"n{i}", "idea"),
            lambda i: r.lessons.append("ctx", "failed", f"fixed {i}"),
        ]
        count = 0
        for i in range(10):
            for write in writes:
                before = r.last_lsn
                write(i)
                count += 1
                assert r.last_lsn == before + 1
                assert r._log.durable_lsn >= r.last_lsn  # type: ignore[union-attr]
        assert r._log.fsync_count - start >= count  # type: ignore[union-attr]


# -- BALANCED -------------------------------------------------------------------------


def test_balanced_plain_write_returns_before_fsync_and_is_flushed_within_the_interval(tmp_path: Path) -> None:
    """A plain BALANCED write is in the OS on return, on disk within the flush interval."""
    with Replica.open(tmp_path, durability="balanced", flush_interval=2.0) as r:
        assert r.durability is Durability.BALANCED
        assert wait_until(lambda: r.durable_lsn >= r.last_lsn, timeout=5)
        r.tasks.create("x", id="t1")
        written = time.monotonic()
        assert r.durable_lsn < r.last_lsn, "a plain BALANCED write must not wait for fsync"
        assert wait_until(lambda: r.durable_lsn >= r.last_lsn, timeout=5)
        elapsed = time.monotonic() - written
        assert elapsed < 2.0 + 1.0, f"flushed only after {elapsed:.2f}s"


def test_balanced_default_interval_flushes_within_about_50ms(tmp_path: Path) -> None:
    """With the default interval (50 ms) every plain write reaches the disk promptly."""
    with Replica.open(tmp_path, durability="balanced") as r:
        for i in range(5):
            r.tasks.create("x", id=f"t{i}")
            written = time.monotonic()
            target = r.last_lsn
            assert wait_until(lambda: r.durable_lsn >= target, timeout=5)
            assert time.monotonic() - written < 0.05 + 0.45


def test_balanced_flusher_disarms_when_idle_and_flushes_again_on_the_next_write(tmp_path: Path) -> None:
    """After a spell with nothing to flush the flusher sleeps; the next plain write wakes it and is
    flushed within the interval, and so is each of a steady stream of writes while it stays awake."""
    with Replica.open(tmp_path, durability="balanced", flush_interval=0.2) as r:
        log = r._log
        assert log is not None
        for round_ in range(2):
            assert wait_until(lambda: not log._flusher_armed, timeout=5), "an idle flusher disarms"
            for i in range(6):
                r.tasks.create("x", id=f"t{round_}-{i}")
                written, target = time.monotonic(), r.last_lsn
                assert log._flusher_armed
                assert wait_until(lambda: r.durable_lsn >= target, timeout=5)
                assert time.monotonic() - written < 0.2 + 0.8


def test_balanced_transaction_is_durable_when_it_returns(tmp_path: Path) -> None:
    """`with r.transaction()` in BALANCED mode fsyncs before returning, without waiting for the flusher."""
    with Replica.open(tmp_path, durability="balanced", flush_interval=30.0) as r:
        r.tasks.create("plain", id="p")
        assert r.durable_lsn < r.last_lsn
        for i in range(5):
            before = r.last_lsn
            with r.transaction():
                r.tasks.create("a", id=f"a{i}")
                r.tasks.create("b", id=f"b{i}")
                r.counters.incr("txn")
            assert r.last_lsn == before + 1, "a transaction is one log record"
            assert r.durable_lsn >= r.last_lsn


def test_transaction_is_one_record_and_atomic_after_reopen(tmp_path: Path) -> None:
    """A transaction's writes are one record: after reopen they are all there."""
    with Replica.open(tmp_path, durability="balanced") as r:
        before = r.last_lsn
        with r.transaction():
            for i in range(20):
                r.tasks.create("x", id=f"t{i}")
            r.counters.incr("n", 20)
            r.graph.add_node("g", "idea")
        assert r.last_lsn == before + 1
    with Replica.open(tmp_path) as r:
        assert len(task_ids(r)) == 20 and r.counters.value("n") == 20 and r.graph.has_node("g")


def test_error_inside_a_transaction_keeps_earlier_writes_as_documented(tmp_path: Path) -> None:
    """A Doc transaction cannot roll back: writes before an exception in the block stay (as documented)."""
    with Replica.open(tmp_path) as r:
        with pytest.raises(RuntimeError):
            with r.transaction():
                r.tasks.create("kept", id="t1")
                raise RuntimeError("boom")
        assert task_ids(r) == {"t1"}
        r.tasks.create("next", id="t2")
    with Replica.open(tmp_path) as r:
        assert task_ids(r) == {"t1", "t2"}


@pytest.fixture
def slow_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every segment fsync take at least 5 ms (a slow disk), so group commit is observable."""
    real = update_log._OpenSegment.sync

    def slow(self: update_log._OpenSegment) -> None:
        time.sleep(0.005)
        real(self)

    monkeypatch.setattr(update_log._OpenSegment, "sync", slow)


@pytest.mark.parametrize("mode", ["balanced", "paranoid"])
def test_concurrent_transactions_share_fsyncs(tmp_path: Path, slow_fsync: None, mode: str) -> None:
    """Transactions committed concurrently from threads are each durable on return, with fewer fsyncs than commits."""
    threads_n, per_thread = 8, 10
    with Replica.open(tmp_path, durability=mode, flush_interval=30.0) as r:
        lsn_of: dict[int, int] = {}
        r.on_update(lambda update, origin: lsn_of.__setitem__(threading.get_ident(), r.last_lsn))
        start_fsyncs = r._log.fsync_count  # type: ignore[union-attr]
        start_lsn = r.last_lsn
        failures: list[str] = []
        barrier = threading.Barrier(threads_n)

        def worker(n: int) -> None:
            barrier.wait(timeout=10)
            for i in range(per_thread):
                with r.transaction():
                    r.tasks.create("x", id=f"w{n}-{i}")
                    r.counters.incr("n")
                mine = lsn_of[threading.get_ident()]
                if r.durable_lsn < mine:
                    failures.append(f"thread {n} commit {i}: lsn {mine} not durable on return")

        workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in workers)
        assert failures == []
        commits = threads_n * per_thread
        assert r.last_lsn - start_lsn == commits
        fsyncs = r._log.fsync_count - start_fsyncs  # type: ignore[union-attr]
        assert fsyncs < commits, f"{fsyncs} fsyncs for {commits} concurrent commits: no group commit"
        assert r.counters.value("n") == commits
    with Replica.open(tmp_path) as r:
        assert len(task_ids(r)) == commits


@pytest.mark.parametrize("mode", ["balanced", "paranoid"])
def test_a_sync_uses_the_open_segments_descriptor_and_a_roll_meanwhile_retires_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """A group-commit fsync goes through the descriptor of the segment this process appends to (no
    open by name); a roll while it runs leaves that descriptor open until the fsync is done."""
    real = update_log._sync_file
    entered, release = threading.Event(), threading.Event()
    used: list[int] = []
    failures: list[BaseException] = []

    def held(fd: int) -> None:
        if threading.current_thread().name == "syncer" and not used:
            used.append(fd)
            entered.set()
            release.wait(timeout=10)
            os.fstat(fd)
        real(fd)

    with Replica.open(tmp_path, durability=mode, flush_interval=30.0) as r:
        log_ = r._log
        assert log_ is not None
        r.tasks.create("x", id="t0")
        segment = log_._segment
        assert segment is not None and segment.fd >= 0
        monkeypatch.setattr(update_log, "_sync_file", held)

        def sync() -> None:
            try:
                with r.transaction():
                    r.tasks.create("x", id="t1")
            except BaseException as exc:
                failures.append(exc)

        syncer = threading.Thread(target=sync, name="syncer")
        syncer.start()
        assert entered.wait(timeout=10)
        assert used == [segment.fd]
        log_.roll()
        assert log_._segment is not segment
        assert segment.fd >= 0, "the segment a sync is using was closed under it"
        release.set()
        syncer.join(timeout=10)
        assert not failures
        assert segment.fd == -1
        assert r.durable_lsn >= r.last_lsn
        assert r.tasks.get("t1") is not None

# -- LAZY -----------------------------------------------------------------------------


def test_lazy_never_fsyncs_on_write_but_flush_and_close_do(tmp_path: Path) -> None:
    """LAZY writes and transactions never fsync (sealing a full segment does, in every mode, so that a
    sealed segment is durable for every process on the directory); flush() makes everything durable."""
    with Replica.open(tmp_path, durability="lazy", segment_size=4096) as r:
        start = r._log.fsync_count  # type: ignore[union-attr]
        write_some(r, "l", 20)
        with r.transaction():
            r.tasks.create("txn", id="txn")
        seals = len(segments(tmp_path)) - 1
        assert seals > 0
        assert r._log.fsync_count == start + seals  # type: ignore[union-attr]
        assert r.durable_lsn < r.last_lsn
        r.flush()
        assert r.durable_lsn >= r.last_lsn
        r.tasks.create("after flush", id="late")
    with Replica.open(tmp_path, durability="lazy") as r:
        assert {"l0", "l19", "txn", "late"} <= task_ids(r)
        assert r.counters.value("writes") == 20


def test_unknown_durability_mode_is_refused(tmp_path: Path) -> None:
    """A misspelt mode is a clear error, and the directory is not left locked."""
    with pytest.raises(ValueError, match="unknown durability mode"):
        Replica.open(tmp_path, durability="fast")
    with Replica.open(tmp_path, durability="LAZY") as r:
        assert r.durability is Durability.LAZY


# -- compaction -------------------------------------------------------------------------


def test_compaction_writes_snapshots_deletes_covered_segments_and_reopens_equal(tmp_path: Path) -> None:
    """Two compactions: snapshots named by lsn, two kept, segments the older covers deleted, state equal on reopen."""
    with Replica.open(tmp_path, segment_size=4096) as r:
        write_some(r, "a", 15)
        first = r.compact()
        assert first.snapshot.exists() and first.snapshot.name == f"{first.lsn:016d}.snap"
        assert first.lsn == r.last_lsn and first.removed_segments == []
        write_some(r, "b", 15)
        segs_before = segments(tmp_path)
        second = r.compact()
        assert second.removed_segments, "the second compaction deletes what the first snapshot covers"
        for path in second.removed_segments:
            assert path in segs_before and not path.exists()
            following = [p for p in segs_before if p.name > path.name][0]
            assert int(following.name[:16]) - 1 <= first.lsn
        remaining = segments(tmp_path)
        assert int(remaining[0].name[:16]) <= first.lsn + 1, "records after the older snapshot are kept"
        write_some(r, "c", 15)
        third = r.compact()
        snaps = sorted((tmp_path / "snapshots").glob("*.snap"))
        assert snaps == [second.snapshot, third.snapshot]
        write_some(r, "d", 3)
        roots = doc_roots(r.doc)
        counters = r.counters.all()
        last = r.last_lsn
    with Replica.open(tmp_path) as r:
        assert r.open_report.snapshot_lsn == third.lsn
        assert r.open_report.replay.records == last - third.lsn
        assert doc_roots(r.doc) == roots
        assert r.counters.all() == counters
        r.tasks.create("after", id="after")
        assert r.last_lsn == last + 1


def test_automatic_compaction_runs_in_the_background(tmp_path: Path) -> None:
    """Past `auto_compact_bytes` of log a snapshot is taken without being asked."""
    with Replica.open(tmp_path, auto_compact_bytes=8 * 1024) as r:
        for i in range(60):
            r.tasks.create("x", id=f"t{i}", description="d" * 200)
        assert wait_until(lambda: any((tmp_path / "snapshots").glob("*.snap")), timeout=10)
        expected = task_ids(r)
    with Replica.open(tmp_path) as r:
        assert task_ids(r) == expected


def test_memory_replica_has_nothing_to_compact() -> None:
    """Compacting an in-memory replica is a clear error."""
    with pytest.raises(ReplicaError):
        Replica.memory().compact()


# -- incarnations ----------------------------------------------------------------------


def test_every_open_takes_a_fresh_client_id(tmp_path: Path) -> None:
    """Each incarnation writes under a client id no earlier incarnation used; the replica id stays."""
    seen: list[int] = []
    replica_ids = set()
    known: set[int] = set()
    for i in range(8):
        with Replica.open(tmp_path) as r:
            assert r.client_id not in known, "reused a client id the stored state already holds"
            assert r.client_id not in seen
            seen.append(r.client_id)
            replica_ids.add(r.replica_id)
            r.tasks.create("x", id=f"t{i}")
            known = set(decode_state_vector(r.state_vector()))
            assert r.client_id in known
    assert len(replica_ids) == 1
    with Replica.open(tmp_path) as r:
        assert set(seen) <= set(decode_state_vector(r.state_vector()))
        assert len(task_ids(r)) == 8


def test_counters_stay_exact_across_many_incarnations(tmp_path: Path) -> None:
    """Increments and decrements from 30 incarnations, past 2**53 in total, sum exactly after every reopen."""
    expected = 0
    for i in range(30):
        with Replica.open(tmp_path, durability="lazy") as r:
            assert r.counters.value("big") == expected
            by = 2**60 + i if i % 3 else 7
            if i % 5 == 4:
                r.counters.decr("big", by)
                expected -= by
            else:
                r.counters.incr("big", by)
                expected += by
            r.counters.incr("small")
            if i == 15:
                r.compact()
    assert abs(expected) > 2**53
    with Replica.open(tmp_path) as r:
        assert r.counters.value("big") == expected
        assert r.counters.get("small") == 30
        assert r.counters.all() == {"big": expected, "small": 30}
        assert r.invalid_records() == []


def test_replica_id_mismatch_is_refused(tmp_path: Path) -> None:
    """Opening a directory under another replica id is an error, not a silent rename."""
    Replica.open(tmp_path, replica_id="r-one").close()
    with pytest.raises(ReplicaError, match="r-one"):
        Replica.open(tmp_path, replica_id="r-two")
    with Replica.open(tmp_path, replica_id="r-one") as r:
        assert r.replica_id == "r-one"


def test_closed_replica_refuses_writes(tmp_path: Path) -> None:
    """Writing after close raises ClosedError instead of writing to a dead log."""
    from replica import ClosedError

    r = Replica.open(tmp_path)
    r.close()
    with pytest.raises(ClosedError):
        r.tasks.create("x")
