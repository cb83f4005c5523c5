"""Many processes, one directory: real processes sharing one replica directory through its log.

Every write any process acknowledged is seen by every other process's next read, survives
any writer being killed with SIGKILL mid-stream, and survives compaction by another process.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from replica import DataDirLockedError, Replica
from replica.log_head import LogHead
from replica.repair import repair

from .helpers import wait_until
from .test_crash import READY_TIMEOUT, Acks, _pump

REPO = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("crash_writer.py")
WORKER = Path(__file__).with_name("mp_worker.py")
KILL_ROUNDS = 20


class Writer:
    """A crash_writer child with its acknowledgements pumped into a queue."""

    def __init__(self, data_dir: Path, mode: str, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(data_dir), mode, name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO),
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.pump = threading.Thread(target=_pump, args=(self.proc.stdout, self.lines), daemon=True)
        self.pump.start()
        self.acks = Acks()
        first = self.lines.get(timeout=READY_TIMEOUT)
        if first != "ready":
            self.proc.kill()
            raise AssertionError(f"writer {name} did not open the shared directory: {first!r}: {self.stderr()}")

    def drain(self) -> None:
        """Record every acknowledgement read so far."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return
            if line is None:
                return
            self.acks.add(line)

    def wait_for_acks(self, count: int, timeout: float = 20.0) -> None:
        """Block until this writer acknowledged at least `count` writes in all."""
        deadline = time.monotonic() + timeout
        while self.acks.total < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"writer {self.name} stalled at {self.acks.total} acks: {self.stderr()}"
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line is not None, f"writer {self.name} exited: {self.stderr()}"
            self.acks.add(line)

    def kill(self) -> None:
        """SIGKILL, then collect the acknowledgements that made it out."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.pump.join(timeout=10)
        self.drain()
        stderr = self.stderr()
        assert "Traceback" not in stderr, stderr
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None or self.proc.stderr.closed:
            return ""
        return self.proc.stderr.read()


def _check_acks(data_dir: Path, mode: str, writers: list[Writer]) -> None:
    with Replica.open(data_dir, durability=mode) as r:
        present = {t.id for t in r.tasks.list()}
        assert r.invalid_records() == []
        for writer in writers:
            missing = [t for t in writer.acks.tasks if t not in present]
            assert not missing, f"{writer.name}: acknowledged tasks lost: {missing[:5]}"
            lost = [pair for pair in writer.acks.txns if not (pair[0] in present and pair[1] in present)]
            assert not lost, f"{writer.name}: acknowledged transactions lost: {lost[:5]}"
            for task_id, status in writer.acks.updates.items():
                assert r.tasks.get(task_id).status.value == status, (writer.name, task_id)
        halves_a = {t[3:] for t in present if t.startswith("ta-")}
        halves_b = {t[3:] for t in present if t.startswith("tb-")}
        assert halves_a == halves_b, "a transaction was half applied"
        assert r.counters.value("txn") == len(halves_a)
        acked = sum(w.acks.incrs for w in writers)
        killed = len(writers)
        assert acked <= r.counters.value("acks") <= acked + killed


@pytest.mark.parametrize("mode", ["paranoid", "balanced"])
def test_killing_random_writers_among_live_ones_loses_no_acknowledged_write(tmp_path: Path, mode: str) -> None:
    """KILL_ROUNDS times: SIGKILL one of 4 writers mid-stream while 3 keep writing, and start another."""
    data_dir = tmp_path / "data"
    rng = random.Random(f"mp-kill-{mode}")
    live = [Writer(data_dir, mode, f"w{i}") for i in range(4)]
    finished: list[Writer] = []
    try:
        for round_id in range(KILL_ROUNDS):
            for writer in live:
                writer.drain()
            victim = live.pop(rng.randrange(len(live)))
            victim.wait_for_acks(victim.acks.total + rng.randrange(1, 12))
            victim.kill()
            finished.append(victim)
            live.append(Writer(data_dir, mode, f"r{round_id}"))
    finally:
        for writer in live:
            writer.kill()
            finished.append(writer)
    assert sum(w.acks.total for w in finished) > KILL_ROUNDS * 4
    _check_acks(data_dir, mode, finished)


def test_a_write_acknowledged_in_one_process_is_seen_by_the_next_read_of_another(tmp_path: Path) -> None:
    """Freshness: the reader was open before the write; after the writer's signal, one read sees it, no sleep."""
    with Replica.open(tmp_path) as reader:
        assert reader.tasks.list() == []
        for i in range(5):
            out = subprocess.run(
                [sys.executable, "-c",
                 "import sys\nfrom replica import Replica\n"
                 "with Replica.open(sys.argv[1]) as r:\n"
                 "    r.tasks.create('fresh', id=sys.argv[2])\n"
                 "    r.counters.incr('n')\n"
                 "    print('committed', flush=True)\n",
                 str(tmp_path), f"fresh-{i}"],
                cwd=str(REPO), capture_output=True, text=True, timeout=60,
            )
            assert out.stdout.strip() == "committed", out.stderr
            assert reader.tasks.get(f"fresh-{i}").title == "fresh"
            assert reader.counters.value("n") == i + 1


def test_compaction_in_one_process_while_three_others_read_and_write(tmp_path: Path) -> None:
    """The parent compacts in a loop while 3 workers write (tiny segments) and read back: nothing lost, no error."""
    data_dir = tmp_path / "data"
    count = 150
    with Replica.open(data_dir, segment_size=16 * 1024) as compactor:
        workers = [
            subprocess.Popen([sys.executable, str(WORKER), str(data_dir), "balanced", f"k{i}", str(count)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO))
            for i in range(3)
        ]
        compactions = 0
        deadline = time.monotonic() + 120
        while any(w.poll() is None for w in workers):
            assert time.monotonic() < deadline, "workers did not finish"
            report = compactor.compact()
            if report is not None:
                compactions += 1
            compactor.tasks.list()
        outputs = [w.communicate(timeout=30) for w in workers]
        for worker, (stdout, stderr) in zip(workers, outputs):
            assert worker.returncode == 0, stdout[-500:] + stderr[-2000:]
            assert stdout.strip().endswith("done")
        assert compactions >= 3
        expected = {f"k{i}-{j}" for i in range(3) for j in range(count)}
        assert expected <= {t.id for t in compactor.tasks.list()}
        assert compactor.counters.value("shared") == 3 * count
    with Replica.open(data_dir) as fresh:
        assert expected <= {t.id for t in fresh.tasks.list()}
        assert fresh.counters.value("shared") == 3 * count


def test_several_opens_in_one_process_share_the_directory_and_see_each_other(tmp_path: Path) -> None:
    """Two opens of one directory in one process behave like two processes: distinct writers, one board."""
    with Replica.open(tmp_path) as a, Replica.open(tmp_path, durability="paranoid") as b:
        assert a.client_id != b.client_id and a.replica_id == b.replica_id
        a.tasks.create("from a", id="A")
        b.tasks.update("A", status="in_progress")
        b.counters.incr("n", 2)
        a.counters.incr("n", 3)
        assert a.tasks.get("A").status.value == "in_progress"
        assert b.counters.value("n") == a.counters.value("n") == 5
        events: list[str] = []
        a.subscribe(lambda event: events.append(event.origin))
        b.tasks.create("from b", id="B")
        assert a.tasks.get("B").title == "from b"
        assert "process" in events


def test_a_torn_record_of_a_dead_writer_is_cut_by_the_next_writer(tmp_path: Path) -> None:
    """Bytes a writer left past the published end (it died mid-append) are cut and counted, never read."""
    with Replica.open(tmp_path) as r:
        r.tasks.create("first", id="t1")
        head = LogHead.open(tmp_path / "log")
        try:
            segment = r._log._segment  # type: ignore[union-attr]
            assert segment is not None
            segment.write(b"\x55" * 40)  # a frame header and body that no one published
            segment.end = head.end
            before = head.torn_records
        finally:
            head.close()
        with Replica.open(tmp_path) as other:
            other.tasks.create("second", id="t2")
            assert other._log.torn_cut == 1  # type: ignore[union-attr]
        assert {t.id for t in r.tasks.list()} == {"t1", "t2"}
        head = LogHead.open(tmp_path / "log")
        try:
            assert head.torn_records == before + 1
        finally:
            head.close()
    with Replica.open(tmp_path) as reopened:
        assert {t.id for t in reopened.tasks.list()} == {"t1", "t2"}
        assert reopened.open_report.replay.torn_tail is None


def test_repair_is_refused_while_another_process_has_the_directory_open(tmp_path: Path) -> None:
    """Repair needs the directory to itself; opening needs no lock file cleanup after a holder dies."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\nfrom replica import Replica\nr = Replica.open(sys.argv[1])\n"
         "r.tasks.create('held', id='h')\nprint('open', flush=True)\nsys.stdin.read()\n",
         str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(REPO),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(DataDirLockedError):
            repair(tmp_path)
        with Replica.open(tmp_path) as r:
            assert r.tasks.get("h").title == "held"
    finally:
        holder.kill()
        holder.wait(timeout=10)
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()
    with Replica.open(tmp_path) as r:
        assert r.tasks.get("h").title == "held"


def test_a_follower_hears_another_process_write_without_reading(tmp_path: Path) -> None:
    """`follow()` (started by subscribing) applies other processes' records by itself: listeners hear them."""
    with Replica.open(tmp_path) as listener, Replica.open(tmp_path) as writer:
        heard: list[tuple[str, str]] = []
        updates: list[str | None] = []
        listener.on_update(lambda update, origin: updates.append(origin))
        listener.subscribe(lambda event: heard.append((event.id, event.origin)))
        writer.tasks.create("elsewhere", id="T-far")
        assert wait_until(lambda: ("T-far", "process") in heard, timeout=10)
        assert "process" in updates


def test_verify_while_another_process_writes_finds_no_damage_and_blocks_no_writer(tmp_path: Path) -> None:
    """verify scans what was published when it began, holding neither the replica's lock nor the append lock."""
    from replica.app.commands import execute

    data_dir = tmp_path / "data"
    with Replica.open(data_dir, segment_size=16 * 1024) as r:
        worker = subprocess.Popen([sys.executable, str(WORKER), str(data_dir), "lazy", "v", "400"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO))
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        verified = 0
        while worker.poll() is None and verified < 30:
            result = execute(r, "verify", {})
            assert result["ok"], result
            verified += 1
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err[-2000:]
        assert verified >= 3
        assert execute(r, "verify", {})["ok"]


OPEN_CLOSE = """
import sys
from replica import Replica
for i in range(int(sys.argv[3])):
    with Replica.open(sys.argv[1]) as r:
        r.counters.incr("opens")
print("ok", flush=True)
"""


def test_processes_opening_and_closing_at_once_never_refuse_each_other(tmp_path: Path) -> None:
    """A closing process checks whether it is the last one under the append lock and gives the check back
    before releasing it, so an opener never finds the directory held exclusively."""
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_CLOSE, str(tmp_path), str(n), "30"], cwd=str(REPO),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == "ok", err[-2000:]
    with Replica.open(tmp_path) as r:
        assert r.counters.value("opens") == 90


def test_a_stray_segment_of_a_writer_that_died_rolling_over_is_harmless(tmp_path: Path) -> None:
    """A roller creates the next segment and dies before publishing it: writers go on in the published
    segment, the next roll removes the stray, and a later open alone finds every record."""
    from replica.frames import encode_segment_header
    from replica.update_log import segment_name

    with Replica.open(tmp_path, segment_size=64 * 1024) as r:
        r.tasks.create("first", id="t1")
        head = LogHead.open(tmp_path / "log")
        try:
            stray = tmp_path / "log" / segment_name(head.last_lsn + 1)
        finally:
            head.close()
        stray.write_bytes(encode_segment_header())
        with Replica.open(tmp_path, segment_size=64 * 1024) as other:
            for i in range(5):
                other.tasks.create(f"after {i}", id=f"a{i}")
        assert {t.id for t in r.tasks.list()} == {"t1", "a0", "a1", "a2", "a3", "a4"}
    with Replica.open(tmp_path) as alone:
        assert {t.id for t in alone.tasks.list()} == {"t1", "a0", "a1", "a2", "a3", "a4"}
        assert not stray.exists() or len(stray.read_bytes()) > 16


def test_a_complete_record_a_writer_never_published_is_cut_whole(tmp_path: Path) -> None:
    """A writer killed after writing its whole record but before publishing: the next writer's record
    takes that lsn, readers see only the published one, and a later open alone reports no torn tail."""
    from replica.frames import encode_record

    with Replica.open(tmp_path) as r:
        r.tasks.create("first", id="t1")
        with Replica.open(tmp_path) as ghost:
            ghost.tasks.create("ghost", id="g")
        head = LogHead.open(tmp_path / "log")
        try:
            path = tmp_path / "log" / f"{head.segment:016d}.log"
            frame = encode_record(head.last_lsn + 1, 1, b"\x00\x00")
            with open(path, "r+b") as out:
                out.seek(head.end)
                out.write(frame + b"\x77" * 64)
        finally:
            head.close()
        with Replica.open(tmp_path) as live:
            live.tasks.create("live", id="t2")
        assert {t.id for t in r.tasks.list()} == {"t1", "g", "t2"}
    with Replica.open(tmp_path) as alone:
        assert {t.id for t in alone.tasks.list()} == {"t1", "g", "t2"}
        assert alone.open_report.replay.torn_tail is None


def test_paranoid_local_writes_and_peer_updates_on_two_threads_do_not_deadlock(tmp_path: Path) -> None:
    """sync() never takes the append lock, so a thread holding it while fsyncing cannot wait on one that needs it."""
    peer = Replica.memory("peer")
    for i in range(60):
        peer.tasks.create(f"peer {i}", id=f"p{i}")
    with Replica.open(tmp_path, durability="paranoid") as r:
        errors: list[BaseException] = []

        def local() -> None:
            try:
                for i in range(60):
                    r.tasks.create(f"local {i}", id=f"l{i}")
            except BaseException as exc:
                errors.append(exc)

        def remote() -> None:
            try:
                for i in range(60):
                    r.apply_update(peer.diff(), origin="peer")
                    peer.tasks.update(f"p{i}", status="completed")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=local), threading.Thread(target=remote)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads), "writers deadlocked"
        assert not errors, errors
        assert len(r.tasks.list()) == 120
