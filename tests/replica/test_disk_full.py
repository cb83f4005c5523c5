"""A full disk: writes are refused cleanly and change nothing; reads, verify, close and reopen work.

The directory lives on a small tmpfs mounted by the test (root only; the tests skip with
the reason otherwise). A filler file takes the rest of the space, so the log can grow no
further: once the open segment's reserved room is used up, every write fails with
DiskFullError before it touches the Doc. Removing the filler makes everything work again.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from replica import Replica
from replica.errors import DiskFullError
from replica.datadir import DataDir
from replica.repair import scan
from replica.snapshot import SnapshotStore

AGENTSTATE = str(Path(sys.executable).parent / "agentstate")
SEGMENT = 256 * 1024
MAX_WRITES = 5_000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    """Take every free byte of `disk` with one file; return it."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out:
        for size in (65536, 4096, 1):
            while True:
                try:
                    if not out.write(b"f" * size):
                        break
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    return filler


def _write_until_full(replica: Replica) -> list[str]:
    acked: list[str] = []
    for i in range(MAX_WRITES):
        before = {t.id for t in replica.tasks.list()}
        state = replica.state_vector()
        try:
            replica.tasks.create("x" * 200, id=f"T-{i}")
        except DiskFullError as exc:
            assert "disk full" in str(exc)
            assert {t.id for t in replica.tasks.list()} == before, "a refused write changed the board"
            assert replica.state_vector() == state, "a refused write changed the document"
            return acked
        acked.append(f"T-{i}")
    raise AssertionError(f"{MAX_WRITES} writes fitted on a full disk")


def test_a_full_disk_refuses_writes_cleanly_and_loses_nothing(small_disk: Path) -> None:
    data = small_disk / "data"
    replica = Replica.open(data, segment_size=SEGMENT)
    replica.tasks.create("before", id="T-before")
    filler = _fill(small_disk)
    acked = ["T-before", *_write_until_full(replica)]
    with pytest.raises(DiskFullError):
        replica.counters.incr("n")
    assert replica.counters.value("n") == 0
    assert {t.id for t in replica.tasks.list()} == set(acked)
    replica.close()

    with Replica.open(data, segment_size=SEGMENT) as reopened:
        assert {t.id for t in reopened.tasks.list()} == set(acked)
        assert reopened.invalid_records() == []
        with pytest.raises(DiskFullError):
            reopened.tasks.create("still full", id="T-full")
    assert scan(DataDir(data)).clean

    filler.unlink()
    with Replica.open(data, segment_size=SEGMENT) as freed:
        freed.tasks.create("after", id="T-after")
        freed.counters.incr("n")
    with Replica.open(data, segment_size=SEGMENT) as final:
        assert {t.id for t in final.tasks.list()} == set(acked) | {"T-after"}
        assert final.counters.value("n") == 1


def _cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTATE_")}
    return subprocess.run([AGENTSTATE, "--data", str(data), *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_the_cli_on_a_full_disk_reads_verifies_and_refuses_writes_with_exit_5(small_disk: Path) -> None:
    data = small_disk / "data"
    with Replica.open(data, segment_size=SEGMENT) as replica:
        replica.tasks.create("before", id="T-before")
        filler = _fill(small_disk)
        _write_until_full(replica)
    refused = _cli(data, "task", "add", "no room")
    assert refused.returncode == 5, refused.stderr
    assert "disk full" in refused.stderr and "Traceback" not in refused.stderr
    listed = _cli(data, "task", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "T-before" in listed.stdout
    checked = _cli(data, "verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    filler.unlink()
    assert _cli(data, "task", "add", "room again").returncode == 0


def test_a_snapshot_that_does_not_fit_leaves_nothing_behind(small_disk: Path) -> None:
    data = small_disk / "data"
    with Replica.open(data, segment_size=SEGMENT) as replica:
        for i in range(50):
            replica.tasks.create("y" * 500, id=f"S-{i}")
        state = replica.diff()
        filler = _fill(small_disk)
        store = SnapshotStore(data / "snapshots")
        with pytest.raises(OSError):
            store.write(replica.last_lsn, state, replica.replica_id)
        assert not list((data / "snapshots").glob("*"))
        assert len(replica.tasks.list()) == 50
    filler.unlink()
    with Replica.open(data) as reopened:
        assert len(reopened.tasks.list()) == 50
