"""compat.wal: TransactionWALEntry and WALManager (sheet section 6)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Callable, Dict, List
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import compat
from compat.checksums import canonical_bytes, compute_checksum
from compat.config import DurabilityMode
from compat.managed_wal import ManagedWAL, entry_line
from compat.wal import TransactionWALEntry, WALManager
from tests.compat.conftest import Child

SIX_KEYS = {"seq", "ts", "tx", "op", "data", "checksum"}


def _lines(wal: WALManager) -> List[Dict]:
    return [json.loads(line) for line in wal.wal_file.read_text().splitlines() if line.strip()]


def _append_raw(wal: WALManager, text: str) -> None:
    with open(wal.wal_file, "a", encoding="utf-8") as handle:
        handle.write(text)


# ------------------------------------------------------ TransactionWALEntry


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0) | st.none(),
    st.text() | st.integers(),
    st.text() | st.none(),
    st.text(),
    st.dictionaries(st.text(max_size=8), _JSON, max_size=4),
)
def test_managed_entry_line_is_the_canonical_entry_with_its_checksum(
    seq: object, ts: object, tx_id: object, op: str, data: Dict
) -> None:
    """The hand-ordered line is byte for byte the canonical JSON of the entry plus its checksum, for any
    text (escapes, non-ASCII) and any value types, so old readers verify it."""
    body = {"seq": seq, "ts": ts, "tx": tx_id, "op": op, "data": data}
    line = entry_line(seq, ts, tx_id, op, data)  # type: ignore[arg-type]
    assert line == canonical_bytes(body)[:-1] + f',"checksum":"{compute_checksum(body)}"}}\n'.encode()
    assert TransactionWALEntry.from_dict(json.loads(line)).verify()


def test_entry_defaults_and_auto_checksum() -> None:
    entry = TransactionWALEntry(operation="TX_BEGIN")
    assert (entry.payload, entry.seq, entry.tx_id) == ({}, 0, "")
    assert entry.timestamp.endswith("+00:00")
    assert entry.checksum == compute_checksum({"seq": 0, "ts": entry.timestamp, "tx": "", "op": "TX_BEGIN", "data": {}})
    assert entry.verify()


def test_entry_keeps_a_given_checksum_and_verify_detects_tampering() -> None:
    entry = TransactionWALEntry(operation="WRITE", payload={"entity_id": "T-1"}, seq=3, tx_id="TX-1")
    entry.payload["entity_id"] = "T-2"
    assert not entry.verify()
    assert not TransactionWALEntry(operation="WRITE", checksum="0" * 16).verify()


def test_entry_to_dict() -> None:
    entry = TransactionWALEntry(operation="TX_COMMIT", timestamp="t", payload={"version": 2}, seq=7, tx_id="TX-1")
    assert entry.to_dict() == {
        "seq": 7,
        "ts": "t",
        "tx": "TX-1",
        "op": "TX_COMMIT",
        "data": {"version": 2},
        "checksum": entry.checksum,
    }


def test_entry_from_dict_round_trip_and_defaults() -> None:
    entry = TransactionWALEntry(operation="TX_ABORT", payload={"reason": "x"}, seq=2, tx_id="TX-9")
    again = TransactionWALEntry.from_dict(entry.to_dict())
    assert again == entry and again.verify()
    empty = TransactionWALEntry.from_dict({})
    assert (empty.seq, empty.timestamp, empty.tx_id, empty.operation, empty.payload) == (0, "", "", "", {})


def test_entry_without_checksum_gets_one_and_verifies() -> None:
    entry = TransactionWALEntry.from_dict({"seq": 1, "ts": "t", "tx": "TX-1", "op": "TX_BEGIN", "data": {}})
    assert entry.checksum and entry.verify()


def test_wal_module_reexports() -> None:
    assert compat.WALManager is WALManager


# ------------------------------------------------------------ WALManager


def test_layout_and_attributes(tmp_path: Path) -> None:
    wal_dir = tmp_path / "deep" / "wal"
    wal = WALManager(str(wal_dir))
    assert wal.wal_dir == wal_dir and wal_dir.is_dir()
    assert wal.archive_dir == wal_dir / "archived" and wal.archive_dir.is_dir()
    assert wal.wal_file == wal_dir / "current.wal"
    assert wal.seq_file.parent == wal_dir
    assert wal.durability is DurabilityMode.BALANCED
    assert not wal.wal_file.exists()


def test_log_writes_one_compact_line_with_a_checksum(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    seq = wal.log("TX-1", "WRITE", {"entity_id": "T-1", "note": "caf\u00e9"})
    raw = wal.wal_file.read_text()
    assert raw.endswith("\n") and raw.count("\n") == 1
    assert ", " not in raw and ": " not in raw, "compact JSON"
    line = json.loads(raw)
    assert set(line) == SIX_KEYS
    assert line["seq"] == seq == 1
    assert (line["tx"], line["op"], line["data"]) == ("TX-1", "WRITE", {"entity_id": "T-1", "note": "caf\u00e9"})
    assert line["ts"].endswith("+00:00")
    checksum = line.pop("checksum")
    assert checksum == compute_checksum(line)


def test_paranoid_log_calls_fsync(tmp_path: Path) -> None:
    wal = WALManager(tmp_path, durability=DurabilityMode.PARANOID)
    with mock.patch("os.fsync") as fsync:
        wal.log_tx_begin("TX-1", 0)
    assert fsync.called


def test_helpers_store_the_documented_data(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    seqs = [
        wal.log_tx_begin("TX-1", 5),
        wal.log_write("TX-1", "T-1", 0, 1),
        wal.log_tx_prepare("TX-1"),
        wal.log_tx_commit("TX-1", 6),
        wal.log_tx_abort("TX-2", "version_conflict"),
        wal.log_tx_rollback("TX-3", "explicit"),
    ]
    assert seqs == [1, 2, 3, 4, 5, 6]
    assert [(line["op"], line["data"]) for line in _lines(wal)] == [
        ("TX_BEGIN", {"snapshot": 5}),
        ("WRITE", {"entity_id": "T-1", "old_version": 0, "new_version": 1}),
        ("TX_PREPARE", {}),
        ("TX_COMMIT", {"version": 6}),
        ("TX_ABORT", {"reason": "version_conflict"}),
        ("TX_ROLLBACK", {"reason": "explicit"}),
    ]


def test_sequence_continues_in_a_new_instance(tmp_path: Path) -> None:
    first = WALManager(tmp_path)
    assert [first.log_tx_begin(f"TX-{i}", 0) for i in range(3)] == [1, 2, 3]
    fresh = tmp_path / "other"
    one = WALManager(fresh)
    assert one.log_tx_begin("TX-a", 0) == 1
    assert WALManager(fresh).log_tx_begin("TX-b", 0) == 2
    assert WALManager(tmp_path).log_tx_begin("TX-4", 0) == 4


def test_next_seq_adds_one_and_persists(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    assert wal._next_seq() == 1
    assert wal._next_seq() == 2
    assert json.loads(wal.seq_file.read_text()) == {"seq": 2}
    assert wal.log_tx_prepare("TX-1") == 3


@pytest.mark.parametrize("contents", [None, "", "not json", "[1]", '{"seq": "x"}'])
def test_missing_or_corrupt_sequence_file_starts_at_zero(tmp_path: Path, contents: str | None) -> None:
    wal = WALManager(tmp_path)
    if contents is not None:
        wal.seq_file.write_text(contents)
    assert WALManager(tmp_path).log_tx_begin("TX-1", 0) == 1


def test_sequence_never_goes_back_when_the_sequence_file_is_lost(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    for i in range(5):
        wal.log_tx_begin(f"TX-{i}", 0)
    wal.seq_file.unlink()
    assert WALManager(tmp_path).log_tx_begin("TX-9", 0) == 6


def test_two_live_instances_never_reuse_numbers(tmp_path: Path) -> None:
    one, two = WALManager(tmp_path), WALManager(tmp_path)
    seqs = []
    for i in range(10):
        seqs.append(one.log_tx_begin(f"A-{i}", 0))
        seqs.append(two.log_tx_begin(f"B-{i}", 0))
    assert seqs == list(range(1, 21))
    assert [line["seq"] for line in _lines(one)] == seqs


def test_replay_returns_six_key_dicts_in_file_order(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    wal.log_tx_begin("TX-1", 0)
    wal.log_write("TX-1", "T-1", 0, 1)
    entries = wal.replay()
    assert [set(entry) for entry in entries] == [SIX_KEYS, SIX_KEYS]
    assert [entry["seq"] for entry in entries] == [1, 2]
    assert entries == _lines(wal)
    typed = wal.replay_entries()
    assert all(isinstance(entry, TransactionWALEntry) for entry in typed)
    assert [entry.operation for entry in typed] == ["TX_BEGIN", "WRITE"]


def test_replay_without_a_file_is_empty(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    assert wal.replay() == [] and wal.replay_entries() == []


def test_replay_skips_tampered_checksums(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    wal.log_tx_begin("TX-1", 0)
    wal.log_tx_begin("TX-2", 0)
    lines = wal.wal_file.read_text().splitlines()
    tampered = json.loads(lines[0])
    tampered["data"]["snapshot"] = 99
    wal.wal_file.write_text(json.dumps(tampered) + "\n" + lines[1] + "\n")
    assert [entry["tx"] for entry in wal.replay()] == ["TX-2"]


def test_replay_skips_blank_lines_and_invalid_json(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    wal.log_tx_begin("TX-1", 0)
    _append_raw(wal, "\n   \n\t\n{this is not json\n")
    wal.log_tx_begin("TX-2", 0)
    _append_raw(wal, '{"seq": 9, "tx": "TX-3", "op": "TX_BE')
    assert [entry["tx"] for entry in wal.replay()] == ["TX-1", "TX-2"]


@pytest.mark.parametrize(
    "legacy",
    [
        {"op": "ADOPTED", "entity_id": "T-1", "reason": "orphan_recovery", "timestamp": 1.5, "checksum": "x"},
        {"seq": 5, "tx": "TX-1", "op": "WRITE", "timestamp": 1700000000, "data": {}, "checksum": "x"},
        {"op": "TX_BEGIN", "data": {}, "checksum": "x"},
    ],
)
def test_replay_skips_legacy_lines(tmp_path: Path, legacy: Dict) -> None:
    wal = WALManager(tmp_path)
    body = {key: value for key, value in legacy.items() if key != "checksum"}
    legacy = {**body, "checksum": compute_checksum(body)}
    _append_raw(wal, json.dumps(legacy) + "\n")
    wal.log_tx_begin("TX-1", 0)
    assert [entry["op"] for entry in wal.replay()] == ["TX_BEGIN"]
    assert len(wal.replay_entries()) == 1


def test_replay_rejects_lines_without_a_checksum(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    _append_raw(wal, json.dumps({"seq": 1, "ts": "t", "tx": "TX-1", "op": "TX_BEGIN", "data": {}}) + "\n")
    assert wal.replay() == []


def test_append_after_a_torn_tail_stays_readable(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    wal.log_tx_begin("TX-1", 0)
    _append_raw(wal, '{"seq": 2, "tx": "TX-1", "op": "WR')
    wal.log_tx_commit("TX-1", 1)
    assert [entry["op"] for entry in wal.replay()] == ["TX_BEGIN", "TX_COMMIT"]


# ------------------------------------------------- incomplete transactions


def test_unfinished_transaction_is_active_with_its_snapshot(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    wal.log_tx_begin("TX-1", 7)
    wal.log_write("TX-1", "T-1", 0, 1)
    assert wal.get_incomplete_transactions() == [{"tx_id": "TX-1", "state": "ACTIVE", "snapshot": 7}]


def test_states_go_active_preparing_then_gone(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    wal.log_tx_begin("TX-1", 0)
    assert wal.get_incomplete_transactions()[0]["state"] == "ACTIVE"
    wal.log_tx_prepare("TX-1")
    assert wal.get_incomplete_transactions()[0]["state"] == "PREPARING"
    wal.log_tx_commit("TX-1", 1)
    assert wal.get_incomplete_transactions() == []


def test_mix_yields_only_active_and_preparing(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    wal.log_tx_begin("committed", 0)
    wal.log_tx_begin("preparing", 1)
    wal.log_tx_begin("aborted", 2)
    wal.log_tx_begin("active", 3)
    wal.log_tx_begin("rolled", 4)
    wal.log_tx_prepare("preparing")
    wal.log_tx_prepare("committed")
    wal.log_tx_commit("committed", 1)
    wal.log_tx_abort("aborted", "version_conflict")
    wal.log_tx_rollback("rolled", "explicit")
    assert wal.get_incomplete_transactions() == [
        {"tx_id": "preparing", "state": "PREPARING", "snapshot": 1},
        {"tx_id": "active", "state": "ACTIVE", "snapshot": 3},
    ]


def test_interleaved_transactions_are_tracked_separately(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    wal.log_tx_begin("A", 0)
    wal.log_tx_begin("B", 0)
    wal.log_write("A", "T-1", 0, 1)
    wal.log_tx_prepare("B")
    wal.log_write("B", "T-2", 0, 1)
    states = {tx["tx_id"]: tx["state"] for tx in wal.get_incomplete_transactions()}
    assert states == {"A": "ACTIVE", "B": "PREPARING"}
    wal.log_tx_rollback("B", "explicit")
    assert [tx["tx_id"] for tx in wal.get_incomplete_transactions()] == ["A"]


def test_prepare_of_an_untracked_transaction_is_ignored(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    wal.log_tx_prepare("ghost")
    wal.log_write("ghost", "T-1", 0, 1)
    assert wal.get_incomplete_transactions() == []


def test_snapshot_defaults_to_zero(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    wal.log("TX-1", "TX_BEGIN", {})
    assert wal.get_incomplete_transactions() == [{"tx_id": "TX-1", "state": "ACTIVE", "snapshot": 0}]


def test_tampered_begin_is_not_reported(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    wal.log_tx_begin("TX-1", 0)
    wal.wal_file.write_text(wal.wal_file.read_text().replace('"snapshot":0', '"snapshot":1'))
    assert wal.get_incomplete_transactions() == []


# ---------------------------------------------------------- maintenance


@pytest.mark.parametrize("mode", list(DurabilityMode))
def test_fsync_now_fsyncs_whatever_the_mode(tmp_path: Path, mode: DurabilityMode) -> None:
    wal = WALManager(tmp_path, durability=mode)
    wal.log_tx_begin("TX-1", 0)
    with mock.patch("os.fsync") as fsync:
        wal.fsync_now()
    assert fsync.call_count == 2


def test_fsync_now_without_files(tmp_path: Path) -> None:
    with mock.patch("os.fsync") as fsync:
        WALManager(tmp_path).fsync_now()
    assert fsync.call_count == 0


def test_truncate_with_archive(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    wal.log_tx_begin("TX-1", 0)
    content = wal.wal_file.read_text()
    archived = wal.truncate(archive=True)
    assert archived is not None and archived.parent == wal.archive_dir and archived.suffix == ".wal"
    assert archived.read_text() == content
    assert not wal.wal_file.exists()
    assert wal.replay() == []
    assert wal.log_tx_begin("TX-2", 0) == 2, "the sequence is not reset"


def test_truncate_twice_in_one_second_keeps_both_archives(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    wal.log_tx_begin("TX-1", 0)
    first = wal.truncate()
    wal.log_tx_begin("TX-2", 0)
    second = wal.truncate()
    assert first is not None and second is not None and first != second
    assert first.exists() and second.exists()


def test_truncate_without_archive_deletes(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    wal.log_tx_begin("TX-1", 0)
    assert wal.truncate(archive=False) is None
    assert not wal.wal_file.exists()
    assert list(wal.archive_dir.iterdir()) == []


@pytest.mark.parametrize("archive", [True, False])
def test_truncate_without_a_file(tmp_path: Path, archive: bool) -> None:
    assert WALManager(tmp_path).truncate(archive=archive) is None


# ---------------------------------------------------------- concurrency


def test_threads_sharing_a_manager(tmp_path: Path) -> None:
    wal = WALManager(tmp_path)
    results: List[int] = []
    guard = threading.Lock()

    def work(name: str) -> None:
        for i in range(40):
            seq = wal.log_tx_begin(f"{name}-{i}", i)
            with guard:
                results.append(seq)

    threads = [threading.Thread(target=work, args=(f"T{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == list(range(1, 161))
    assert [entry["seq"] for entry in wal.replay()] == list(range(1, 161))


WAL_WORKER = r"""
import sys
from compat.managed_wal import ManagedWAL
from compat.wal import WALManager

wal = (ManagedWAL if sys.argv[4] == "managed" else WALManager)(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
for i in range(int(sys.argv[2])):
    wal.log_tx_begin(f"{sys.argv[3]}-{i}", i)
if isinstance(wal, ManagedWAL):
    wal.close()
print("done", flush=True)
"""


def _started_workers(spawn: Callable[..., Child], path: Path, kind: str, count: int) -> List[Child]:
    """`count` processes each about to append 60 TX_BEGIN lines with a `kind` ("plain" or "managed") WAL."""
    workers = [spawn(WAL_WORKER, str(path), "60", f"P{n}", kind) for n in range(count)]
    for worker in workers:
        worker.expect("ready")
    for worker in workers:
        worker.send("go")
    return workers


def _finished(workers: List[Child]) -> None:
    for worker in workers:
        worker.expect("done", timeout=60)
        assert worker.finish() == 0


def test_processes_appending_to_one_wal(tmp_path: Path, spawn: Callable[..., Child]) -> None:
    _finished(_started_workers(spawn, tmp_path, "plain", 3))
    entries = WALManager(tmp_path).replay()
    assert len(entries) == 180 == len(_lines(WALManager(tmp_path)))
    assert [entry["seq"] for entry in entries] == list(range(1, 181))
    for name in ("P0", "P1", "P2"):
        mine = [entry["tx"] for entry in entries if entry["tx"].startswith(name)]
        assert mine == [f"{name}-{i}" for i in range(60)]


def test_managed_wals_of_several_processes_keep_one_sequence(tmp_path: Path, spawn: Callable[..., Child]) -> None:
    """A ManagedWAL keeps its lock descriptor and the file's end between appends: lines other processes
    append in between are seen, the sequence continues after them, and no line is torn or lost."""
    here = ManagedWAL(tmp_path)
    workers = _started_workers(spawn, tmp_path, "managed", 2)
    for i in range(60):
        here.log_tx_begin(f"H-{i}", i)
    _finished(workers)
    here.log_tx_begin("H-last", 0)
    here.close()
    entries = WALManager(tmp_path).replay()
    assert len(entries) == 181 == len(_lines(WALManager(tmp_path)))
    assert [entry["seq"] for entry in entries] == list(range(1, 182))
    for name, count in (("P0", 60), ("P1", 60), ("H", 60)):
        mine = [entry["tx"] for entry in entries if entry["tx"].startswith(f"{name}-") and entry["tx"] != "H-last"]
        assert mine == [f"{name}-{i}" for i in range(count)]
    assert entries[-1]["tx"] == "H-last"


def test_a_commits_prepare_and_commit_lines_are_adjacent_while_other_processes_append(
    tmp_path: Path, spawn: Callable[..., Child]
) -> None:
    """A commit holds `.wal.lock` from TX_PREPARE to TX_COMMIT (looking at the file once): lines other
    processes append land before or after the pair, never between, and the sequence stays one."""
    from compat.tx_manager import TransactionManager
    from compat.types import Task

    with TransactionManager(tmp_path, DurabilityMode.RELAXED) as manager:
        workers = _started_workers(spawn, tmp_path / "wal", "plain", 2)
        for i in range(40):
            tx = manager.begin()
            manager.write(tx, Task(id=f"T-{i}", title="t"))
            assert manager.commit(tx).success
        _finished(workers)
    entries = WALManager(tmp_path / "wal").replay()
    assert [entry["seq"] for entry in entries] == list(range(1, len(entries) + 1))
    assert len(entries) == 120 + 40 * 4
    for at, entry in enumerate(entries):
        if entry["op"] == "TX_PREPARE":
            assert (entries[at + 1]["op"], entries[at + 1]["tx"]) == ("TX_COMMIT", entry["tx"])


def test_a_plain_appender_waits_for_a_managed_holder_and_never_replaces_the_lock(
    tmp_path: Path, spawn: Callable[..., Child]
) -> None:
    """`.wal.lock` is a flock for every appender, never taken for stale: a plain WALManager in another
    process waits while a managed WAL holds it (no holder pid in the file), rather than replacing the
    file and appending beside it with the same sequence number."""
    import os
    import time

    from compat.managed_wal import _FILES

    managed = ManagedWAL(tmp_path)
    managed.log_tx_begin("before", 0)
    shared = _FILES.get(tmp_path.resolve())
    assert shared is not None
    lock_inode = os.stat(tmp_path / ".wal.lock").st_ino
    with shared.exclusive():
        worker = spawn(WAL_WORKER, str(tmp_path), "1", "P", "plain")
        worker.expect("ready")
        worker.send("go")
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert os.stat(tmp_path / ".wal.lock").st_ino == lock_inode
            assert [entry["tx"] for entry in managed.replay()] == ["before"]
            time.sleep(0.05)
        managed.log_tx_begin("held", 0)
    worker.expect("done", timeout=60)
    assert worker.finish() == 0
    managed.close()
    entries = WALManager(tmp_path).replay()
    assert [(entry["seq"], entry["tx"]) for entry in entries] == [(1, "before"), (2, "held"), (3, "P-0")]


def test_a_plain_wal_and_a_managed_one_share_one_sequence(tmp_path: Path) -> None:
    """The managed WAL persists the sequence file only when it closes; a plain WALManager appending
    meanwhile continues from the last line, not from that file, so no seq is used twice."""
    managed, plain = ManagedWAL(tmp_path), WALManager(tmp_path)
    seqs = [managed.log_tx_begin("a", 0), plain.log_tx_begin("b", 0), managed.log_tx_begin("c", 0),
            plain.log_tx_begin("d", 0)]
    managed.close()
    assert seqs == [1, 2, 3, 4]
    assert [entry["seq"] for entry in WALManager(tmp_path).replay()] == [1, 2, 3, 4]


def test_a_forked_child_is_excluded_by_its_parents_wal_lock(tmp_path: Path) -> None:
    """The managed WAL keeps its lock descriptor open; a child forked meanwhile gets its own, so the
    parent's hold on `.wal.lock` excludes it (a shared descriptor would let both in)."""
    import fcntl
    import os

    from compat.managed_wal import _FILES

    wal = ManagedWAL(tmp_path)
    shared = _FILES.get(tmp_path.resolve())
    assert shared is not None
    with shared.exclusive():
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                assert shared._lock_fd is not None
                fcntl.flock(shared._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                code = 1
            except BlockingIOError:
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child took the lock its parent held"
    assert wal.log_tx_begin("after", 0) == 1
    wal.close()
