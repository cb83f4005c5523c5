"""One test per kind of on-disk damage, each with its documented outcome (LevelDB log_test style).

torn tail -> dropped and reported; zero-filled tail -> the clean end; flipped byte mid-log ->
LogCorruptionError naming file and offset, repair salvages the rest; truncated snapshot ->
skipped and reported, older snapshot + log used; missing segment -> MissingSegmentError,
repair keeps what is readable and reports the gap; corrupt segment header -> error at
offset 0, repair resynchronises; a CRC-valid record that is not a Yjs update -> StorageError,
repair drops it and reports it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from replica import (
    LogCorruptionError,
    MissingSegmentError,
    Replica,
    StorageError,
)
from replica.datadir import DataDir
from replica.frames import FRAME_HEADER_SIZE, KIND_UPDATE, encode_record
from replica.repair import repair, scan

from .helpers import exchange, flip_byte, read_records, segments, task_ids

SEGMENT_SIZE = 4096
PAD = "p" * 150


def build(data_dir: Path, count: int = 40, peer: Replica | None = None, min_newest: int = 3) -> list[str]:
    """Write at least `count` tasks (one record each) over several small segments, the newest
    holding at least `min_newest` records; mirror every update to `peer`. Returns the task ids."""
    ids: list[str] = []
    with Replica.open(data_dir, durability="balanced", segment_size=SEGMENT_SIZE) as r:
        if peer is not None:
            peer.apply_update(r.diff(None), origin="disk")
            r.on_update(lambda update, origin: peer.apply_update(update, origin="disk"))
        for i in range(count + 10):
            if i >= count and len(read_records(segments(data_dir)[-1])) >= min_newest:
                break
            ids.append(f"t{i:03d}")
            r.tasks.create(f"title {ids[-1]}", id=ids[-1], description=PAD)
    assert len(read_records(segments(data_dir)[-1])) >= min_newest
    return ids


def open_small(data_dir: Path) -> Replica:
    """Open with the same small segment size the directory was built with."""
    return Replica.open(data_dir, durability="balanced", segment_size=SEGMENT_SIZE)


# -- torn tail -----------------------------------------------------------------------


@pytest.mark.parametrize("cut", [3, FRAME_HEADER_SIZE + 5, "half"])
@pytest.mark.parametrize("preallocated", [False, True])
def test_torn_tail_is_dropped_reported_and_appending_continues(tmp_path: Path, cut: int | str, preallocated: bool) -> None:
    """A partial record at the end of the newest segment is dropped, reported, and overwritten by new writes."""
    ids = build(tmp_path)
    newest = segments(tmp_path)[-1]
    last_lsn = read_records(newest)[-1][1].lsn
    good_size = newest.stat().st_size
    frame = encode_record(last_lsn + 1, KIND_UPDATE, b"\x01" * 200)
    keep = len(frame) // 2 if cut == "half" else int(cut)
    with newest.open("ab") as fh:
        fh.write(frame[:keep])
        if preallocated:  # as a crash leaves the memory-mapped, preallocated segment
            fh.write(bytes(SEGMENT_SIZE))
    with open_small(tmp_path) as r:
        torn = r.open_report.replay.torn_tail
        assert torn is not None
        assert torn.path == newest and torn.offset == good_size
        assert 1 <= torn.dropped_bytes <= keep  # trailing zero bytes of the torn frame read as unwritten
        assert any("torn tail" in line and newest.name in line for line in r.open_report.warnings)
        assert task_ids(r) == set(ids)
        assert r.last_lsn == last_lsn
        r.tasks.create("after the tear", id="after")
        assert r.last_lsn == last_lsn + 1
    with open_small(tmp_path) as r:
        assert r.open_report.replay.torn_tail is None
        assert task_ids(r) == set(ids) | {"after"}


def test_torn_segment_header_of_a_fresh_segment_is_dropped(tmp_path: Path) -> None:
    """A newest segment cut inside its header (a crash while rolling) is dropped, nothing else is lost."""
    ids = build(tmp_path)
    newest = segments(tmp_path)[-1]
    next_lsn = read_records(newest)[-1][1].lsn + 1
    fresh = newest.with_name(f"{next_lsn:016d}.log")
    fresh.write_bytes(b"AGST")
    with open_small(tmp_path) as r:
        torn = r.open_report.replay.torn_tail
        assert torn is not None and torn.path == fresh and torn.offset == 0
        assert task_ids(r) == set(ids)
        r.tasks.create("after", id="after")
    with open_small(tmp_path) as r:
        assert task_ids(r) == set(ids) | {"after"}


# -- zero-filled tail ----------------------------------------------------------------


def test_zero_filled_tail_is_the_clean_end(tmp_path: Path) -> None:
    """Zeros over the last records (never written back) read as the end of the log: the rest is intact."""
    ids = build(tmp_path)
    newest = segments(tmp_path)[-1]
    records = read_records(newest)
    assert len(records) >= 3
    zero_from = records[-2][0]
    lost = {ids[-2], ids[-1]}
    size = newest.stat().st_size
    with newest.open("r+b") as fh:
        fh.seek(zero_from)
        fh.write(bytes(size - zero_from + SEGMENT_SIZE))
    with open_small(tmp_path) as r:
        assert r.open_report.replay.torn_tail is None
        assert task_ids(r) == set(ids) - lost
        assert r.last_lsn == records[-3][1].lsn
        r.tasks.create("after", id="after")
    with open_small(tmp_path) as r:
        assert task_ids(r) == (set(ids) - lost) | {"after"}


def test_zeroed_record_header_before_its_body_is_a_torn_tail(tmp_path: Path) -> None:
    """A zeroed header followed by the rest of a record, and nothing valid after it, is a torn tail."""
    ids = build(tmp_path)
    newest = segments(tmp_path)[-1]
    offset, _, _ = read_records(newest)[-1]
    with newest.open("r+b") as fh:
        fh.seek(offset)
        fh.write(bytes(FRAME_HEADER_SIZE))
    with open_small(tmp_path) as r:
        torn = r.open_report.replay.torn_tail
        assert torn is not None and torn.offset == offset
        assert task_ids(r) == set(ids) - {ids[-1]}


# -- flipped byte in the middle --------------------------------------------------------


@pytest.mark.parametrize("where", ["middle segment", "newest segment, records follow"])
def test_flipped_byte_mid_log_is_an_error_naming_file_and_offset_and_repair_salvages(tmp_path: Path, where: str) -> None:
    """Mid-log damage stops open with file and offset; repair keeps every other record and reports the range."""
    peer = Replica.memory()
    data_dir = tmp_path / "data"
    ids = build(data_dir, peer=peer)
    segs = segments(data_dir)
    assert len(segs) >= 4
    victim = segs[len(segs) // 2] if where == "middle segment" else segs[-1]
    records = read_records(victim)
    assert len(records) >= 3
    offset, record, end = records[1]
    total_records = sum(len(read_records(p)) for p in segments(data_dir))
    flip_byte(victim, offset + FRAME_HEADER_SIZE + (end - offset - FRAME_HEADER_SIZE) // 2)

    with pytest.raises(LogCorruptionError) as caught:
        open_small(data_dir)
    err = caught.value
    assert err.path == victim and err.offset == offset
    assert victim.name in str(err) and str(offset) in str(err) and "repair" in str(err)
    probe = DataDir(data_dir)
    probe.lock()  # raises DataDirLockedError if the failed open kept the lock
    probe.unlock()

    result = scan(DataDir(data_dir))
    assert [(d.path, d.offset) for d in result.damage] == [(victim, offset)]
    assert result.damage[0].length == end - offset

    report = repair(data_dir)
    assert report.salvaged_records == total_records - 1
    assert report.dropped == [
        f"{victim.name}: {end - offset} bytes at offset {offset} (checksum mismatch)",
        f"log records {record.lsn}..{record.lsn} are missing",
    ]
    assert report.moved_to is not None and (report.moved_to / "log" / victim.name).exists()

    with open_small(data_dir) as r:
        present = task_ids(r)
        # Every record before the damaged one is applied. Later records of the same writer wait for
        # the lost one (Yjs integrates a writer's updates in order) until a peer supplies it.
        dropped_index = ids.index(next(t for t in ids if t not in present))
        assert set(ids[:dropped_index]) <= present
        exchange(r, peer)
        assert task_ids(r) == set(ids)
        r.tasks.create("after repair", id="after")
    with open_small(data_dir) as r:
        assert task_ids(r) == set(ids) | {"after"}
        assert scan(DataDir(data_dir)).clean


# -- truncated snapshot ----------------------------------------------------------------


def test_truncated_snapshot_is_skipped_and_the_older_one_plus_log_lose_nothing(tmp_path: Path) -> None:
    """The newest snapshot cut short is reported and skipped; the older snapshot and the log hold everything."""
    with open_small(tmp_path) as r:
        for i in range(10):
            r.tasks.create("a", id=f"a{i}", description=PAD)
        first = r.compact()
        for i in range(10):
            r.tasks.create("b", id=f"b{i}", description=PAD)
        second = r.compact()
        for i in range(5):
            r.tasks.create("c", id=f"c{i}")
        r.counters.incr("n", 7)
        expected = task_ids(r)
    snaps = sorted((tmp_path / "snapshots").glob("*.snap"))
    assert snaps == [first.snapshot, second.snapshot]
    data = second.snapshot.read_bytes()
    second.snapshot.write_bytes(data[: len(data) // 2])

    with open_small(tmp_path) as r:
        problems = r.open_report.snapshot_problems
        assert [p.path for p in problems] == [second.snapshot]
        assert "truncated" in problems[0].reason
        assert any(second.snapshot.name in line for line in r.open_report.warnings)
        assert r.open_report.snapshot_lsn == first.lsn
        assert task_ids(r) == expected
        assert r.counters.value("n") == 7


# -- missing segment -------------------------------------------------------------------


@pytest.mark.parametrize("which", ["middle", "first"])
def test_missing_segment_is_an_error_and_repair_keeps_what_is_readable(tmp_path: Path, which: str) -> None:
    """A deleted segment stops open with MissingSegmentError; repair reports the gap and keeps the rest."""
    peer = Replica.memory()
    data_dir = tmp_path / "data"
    ids = build(data_dir, peer=peer)
    segs = segments(data_dir)
    victim = segs[len(segs) // 2] if which == "middle" else segs[0]
    gone = read_records(victim)
    first_missing, last_missing = gone[0][1].lsn, gone[-1][1].lsn
    total_left = sum(len(read_records(p)) for p in segs if p != victim)
    victim.unlink()

    with pytest.raises(MissingSegmentError) as caught:
        open_small(data_dir)
    assert caught.value.expected_lsn == first_missing
    assert caught.value.found_lsn == last_missing + 1
    assert f"{first_missing}..{last_missing}" in str(caught.value)

    report = repair(data_dir)
    assert report.dropped == [f"log records {first_missing}..{last_missing} are missing"]
    assert report.salvaged_records == total_left

    with open_small(data_dir) as r:
        present = task_ids(r)
        if which == "middle":
            before = [t for t in ids if t not in present]
            assert before, "records of the missing segment cannot be there"
            assert set(ids[: ids.index(before[0])]) <= present
        exchange(r, peer)
        assert task_ids(r) == set(ids)


# -- corrupt segment header -----------------------------------------------------------


@pytest.mark.parametrize("which", ["middle", "newest"])
def test_corrupt_segment_header_is_an_error_at_offset_zero_and_repair_keeps_every_record(tmp_path: Path, which: str) -> None:
    """A damaged segment header names the file at offset 0; repair resynchronises and loses no record."""
    ids = build(tmp_path)
    segs = segments(tmp_path)
    victim = segs[len(segs) // 2] if which == "middle" else segs[-1]
    assert read_records(victim)
    flip_byte(victim, 2)
    with pytest.raises(LogCorruptionError) as caught:
        open_small(tmp_path)
    assert caught.value.path == victim and caught.value.offset == 0
    assert "magic" in caught.value.reason

    report = repair(tmp_path)
    assert len(report.dropped) == 1 and victim.name in report.dropped[0]
    with open_small(tmp_path) as r:
        assert task_ids(r) == set(ids)


# -- a valid record that is not a Yjs update ----------------------------------------------


def test_record_with_valid_crc_but_junk_payload_is_a_storage_error_and_repair_drops_it(tmp_path: Path) -> None:
    """A well-framed record whose payload is not a Yjs update: clear StorageError on open; repair drops it."""
    ids = build(tmp_path)
    newest = segments(tmp_path)[-1]
    bad_lsn = read_records(newest)[-1][1].lsn + 1
    with newest.open("ab") as fh:
        fh.write(encode_record(bad_lsn, KIND_UPDATE, b"this is not a yjs update"))
    with pytest.raises(StorageError) as caught:
        open_small(tmp_path)
    assert not isinstance(caught.value, LogCorruptionError)
    assert "not valid Yjs data" in str(caught.value)

    report = repair(tmp_path)
    assert report.unreadable_updates == [bad_lsn]
    assert f"record {bad_lsn} is not a valid update" in report.dropped
    with open_small(tmp_path) as r:
        assert task_ids(r) == set(ids)
        r.tasks.create("after", id="after")
        assert r.last_lsn > bad_lsn
    with open_small(tmp_path) as r:
        assert task_ids(r) == set(ids) | {"after"}


def test_repair_of_a_healthy_directory_keeps_everything(tmp_path: Path) -> None:
    """Repair on an undamaged directory reports nothing dropped and loses nothing."""
    ids = build(tmp_path, count=12)
    assert scan(DataDir(tmp_path)).clean
    report = repair(tmp_path)
    assert report.dropped == [] and report.unreadable_updates == []
    with open_small(tmp_path) as r:
        assert task_ids(r) == set(ids)


def test_repair_refuses_a_directory_held_by_a_replica(tmp_path: Path) -> None:
    """Repair takes the directory lock: it never rewrites a directory a replica holds open."""
    build(tmp_path, count=3)
    from replica import DataDirLockedError

    with open_small(tmp_path):
        with pytest.raises(DataDirLockedError):
            repair(tmp_path)
    assert os.path.isdir(tmp_path / "log")


def test_run_of_zeros_followed_by_valid_records_is_mid_log_damage(tmp_path: Path) -> None:
    """Zeros over a record with valid records after it (damage, or pages written back out of order
    by a power cut) are a LogCorruptionError, not a torn tail; repair keeps every record that reads."""
    peer = Replica.memory()
    data_dir = tmp_path / "data"
    ids = build(data_dir, peer=peer)
    newest = segments(data_dir)[-1]
    offset, record, end = read_records(newest)[0]
    with newest.open("r+b") as fh:
        fh.seek(offset)
        fh.write(bytes(end - offset))
    with pytest.raises(LogCorruptionError) as caught:
        open_small(data_dir)
    assert caught.value.path == newest and caught.value.offset == offset
    assert "zero" in caught.value.reason
    report = repair(data_dir)
    assert f"log records {record.lsn}..{record.lsn} are missing" in report.dropped
    with open_small(data_dir) as r:
        exchange(r, peer)
        assert task_ids(r) == set(ids)


def test_leftover_snapshot_temp_file_from_a_crash_is_ignored(tmp_path: Path) -> None:
    """A half-written `<lsn>.tmp` left by a crash during compaction is neither used nor a problem."""
    ids = build(tmp_path, count=10)
    with open_small(tmp_path) as r:
        r.compact()
    (tmp_path / "snapshots" / f"{10**6:016d}.tmp").write_bytes(b"AGSTSNP1 half written")
    with open_small(tmp_path) as r:
        assert r.open_report.snapshot_problems == []
        assert task_ids(r) == set(ids)
