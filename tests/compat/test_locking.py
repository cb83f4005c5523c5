"""compat.locking.ProcessLock (sheet section 10), in one process and across real processes.

Timing windows are the sheet's; anything that waits for another process waits
for a reported state with a bounded poll, never a bare sleep.
"""

from __future__ import annotations

import fcntl
import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List
from unittest import mock

import pytest

import compat
import compat.locking
from compat.locking import ProcessLock
from tests.compat.conftest import Child, pid_is_dead, wait_until

SpawnFn = Callable[..., Child]


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    return tmp_path / "locks" / "test.lock"


@pytest.fixture
def raw_holder(lock_path: Path) -> Iterator[Callable[[object], int]]:
    """Hold a real ``flock`` on the lock file through a bare descriptor, with chosen file contents."""
    fds: List[int] = []

    def hold(contents: object) -> int:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        text = contents if isinstance(contents, str) else json.dumps(contents)
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
        fds.append(fd)
        return fd

    yield hold
    for fd in fds:
        os.close(fd)


def _holder_info(path: Path) -> dict:
    return json.loads(path.read_text())


def _median_seconds(action: Callable[[], object], runs: int = 5) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


# ------------------------------------------------------------ basics


def test_construction_touches_nothing_on_disk(lock_path: Path) -> None:
    lock = ProcessLock(lock_path)
    assert not lock_path.parent.exists()
    assert lock.lock_path == lock_path
    assert (lock.reentrant, lock.stale_timeout) == (True, 3600.0)
    assert (lock._lock_count, lock._fd) == (0, None)
    assert isinstance(ProcessLock(str(lock_path)).lock_path, Path)


def test_acquire_and_release_counts(lock_path: Path) -> None:
    lock = ProcessLock(lock_path)
    assert lock.acquire() is True
    assert lock._lock_count == 1 and lock._fd is not None and lock.is_locked()
    lock.release()
    assert lock._lock_count == 0 and lock._fd is None and not lock.is_locked()
    assert lock_path.exists(), "the lock file stays on disk"


def test_reentrant_counting(lock_path: Path) -> None:
    lock = ProcessLock(lock_path, reentrant=True)
    assert lock.acquire()
    assert lock.acquire()
    assert lock._lock_count == 2
    lock.release()
    assert lock._lock_count == 1 and lock._fd is not None
    other = ProcessLock(lock_path)
    assert other.acquire() is False, "still held after one release"
    lock.release()
    assert lock._lock_count == 0 and lock._fd is None
    assert other.acquire() is True
    other.release()


def test_reentrancy_counts_per_instance_not_per_thread(lock_path: Path) -> None:
    lock = ProcessLock(lock_path)
    assert lock.acquire()
    results: List[bool] = []
    worker = threading.Thread(target=lambda: results.append(lock.acquire(timeout=1.0)))
    worker.start()
    worker.join(timeout=10)
    assert results == [True]
    assert lock._lock_count == 2
    lock.release()
    lock.release()
    assert lock._fd is None


def test_non_reentrant_repeat_acquire_fails_and_keeps_the_lock(lock_path: Path) -> None:
    lock = ProcessLock(lock_path, reentrant=False)
    assert lock.acquire()
    assert lock.acquire() is False
    assert lock.acquire(timeout=0.05) is False
    assert lock._lock_count == 1 and lock._fd is not None
    lock.release()
    assert lock._fd is None


def test_release_when_not_held_is_a_no_op(lock_path: Path) -> None:
    lock = ProcessLock(lock_path)
    lock.release()
    assert (lock._lock_count, lock._fd) == (0, None)


def test_holder_file_has_our_pid_and_the_acquire_time(lock_path: Path) -> None:
    lock = ProcessLock(lock_path)
    before = time.time()
    assert lock.acquire()
    after = time.time()
    info = _holder_info(lock_path)
    assert info["pid"] == os.getpid()
    assert before <= info["acquired_at"] <= after
    lock.release()


def test_acquire_truncates_previous_contents(lock_path: Path) -> None:
    lock_path.parent.mkdir(parents=True)
    lock_path.write_text("x" * 500)
    lock = ProcessLock(lock_path)
    assert lock.acquire()
    assert set(_holder_info(lock_path)) == {"pid", "acquired_at"}
    lock.release()


def test_creates_missing_parent_directories(tmp_path: Path) -> None:
    lock = ProcessLock(tmp_path / "a" / "b" / "c.lock")
    assert lock.acquire()
    assert (tmp_path / "a" / "b" / "c.lock").exists()
    lock.release()


def test_errors_return_false_instead_of_raising(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    lock = ProcessLock(blocker / "x.lock")
    assert lock.acquire() is False
    assert lock.acquire(timeout=0.05) is False
    assert lock._fd is None


def test_two_instances_in_one_process_exclude_each_other(lock_path: Path) -> None:
    first, second = ProcessLock(lock_path), ProcessLock(lock_path)
    assert first.acquire()
    start = time.monotonic()
    assert second.acquire(timeout=0.5) is False
    assert time.monotonic() - start >= 0.45
    assert first._fd is not None and first._lock_count == 1
    assert second._fd is None and second._lock_count == 0
    first.release()
    assert second.acquire()
    second.release()


def test_two_paths_can_be_held_together(tmp_path: Path) -> None:
    one, two = ProcessLock(tmp_path / "one.lock"), ProcessLock(tmp_path / "two.lock")
    with one, two:
        assert one.is_locked() and two.is_locked()
    assert not one.is_locked() and not two.is_locked()


def test_threads_with_their_own_instances_exclude_each_other(lock_path: Path) -> None:
    counter = {"value": 0, "inside": 0, "overlaps": 0}

    def work() -> None:
        lock = ProcessLock(lock_path)
        for _ in range(50):
            assert lock.acquire(timeout=10.0)
            counter["inside"] += 1
            if counter["inside"] > 1:
                counter["overlaps"] += 1
            value = counter["value"]
            time.sleep(0)
            counter["value"] = value + 1
            counter["inside"] -= 1
            lock.release()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert counter["overlaps"] == 0
    assert counter["value"] == 200


def test_root_and_module_export() -> None:
    assert compat.ProcessLock is ProcessLock


# ------------------------------------------------------- timing windows


def test_single_try_is_immediate(lock_path: Path) -> None:
    holder = ProcessLock(lock_path)
    assert holder.acquire()
    other = ProcessLock(lock_path)
    assert _median_seconds(lambda: other.acquire()) < 0.010
    assert other.acquire() is False
    holder.release()


def test_reentrant_acquire_returns_at_once_even_with_a_timeout(lock_path: Path) -> None:
    lock = ProcessLock(lock_path)
    assert lock.acquire()
    assert _median_seconds(lambda: lock.acquire(timeout=5.0)) < 0.010
    assert lock._lock_count == 6
    for _ in range(6):
        lock.release()
    assert lock._fd is None


@pytest.mark.parametrize(("timeout", "low", "high"), [(0.1, 0.08, 0.2), (0.3, 0.25, 0.4)])
def test_timeout_on_a_held_lock(lock_path: Path, timeout: float, low: float, high: float) -> None:
    holder = ProcessLock(lock_path)
    assert holder.acquire()
    other = ProcessLock(lock_path)
    start = time.monotonic()
    assert other.acquire(timeout=timeout) is False
    elapsed = time.monotonic() - start
    assert low <= elapsed <= high
    holder.release()


def test_acquire_succeeds_when_the_holder_releases(lock_path: Path) -> None:
    holder = ProcessLock(lock_path)
    assert holder.acquire()
    timer = threading.Timer(0.2, holder.release)
    other = ProcessLock(lock_path)
    start = time.monotonic()
    timer.start()
    try:
        assert other.acquire(timeout=1.0) is True
    finally:
        timer.join()
    elapsed = time.monotonic() - start
    assert 0.15 <= elapsed <= 1.0
    other.release()


def test_backoff_doubles_from_10ms_and_caps_at_500ms(lock_path: Path) -> None:
    holder = ProcessLock(lock_path)
    assert holder.acquire()
    sleeps: List[float] = []
    with mock.patch("compat.locking.time.sleep", side_effect=sleeps.append):
        clock = iter(i * 0.4 for i in range(1000))
        with mock.patch("compat.locking.time.monotonic", side_effect=lambda: next(clock)):
            assert ProcessLock(lock_path).acquire(timeout=3.0) is False
    assert sleeps[:6] == [0.01, 0.02, 0.04, 0.08, 0.16, 0.32]
    assert max(sleeps) <= 0.5
    assert all(s > 0 for s in sleeps)
    holder.release()


def test_sleeps_never_exceed_the_time_left(lock_path: Path) -> None:
    holder = ProcessLock(lock_path)
    assert holder.acquire()
    sleeps: List[float] = []
    with mock.patch("compat.locking.time.sleep", side_effect=sleeps.append):
        clock = iter([0.0, 0.0, 0.095, 0.1, 0.1, 0.1])
        with mock.patch("compat.locking.time.monotonic", side_effect=lambda: next(clock)):
            assert ProcessLock(lock_path).acquire(timeout=0.1) is False
    assert sleeps[0] == 0.01
    assert sleeps[1] == pytest.approx(0.005)
    holder.release()


# ------------------------------------------------------ context manager


def test_context_manager_holds_and_releases(lock_path: Path) -> None:
    lock = ProcessLock(lock_path)
    with lock as entered:
        assert entered is lock
        assert lock._fd is not None
        assert _holder_info(lock_path)["pid"] == os.getpid()
    assert lock._lock_count == 0 and lock._fd is None


def test_context_manager_single_try_raises(lock_path: Path) -> None:
    holder = ProcessLock(lock_path)
    assert holder.acquire()
    other = ProcessLock(lock_path)
    start = time.monotonic()
    with pytest.raises(RuntimeError) as caught:
        with other:
            pytest.fail("must not enter")
    assert time.monotonic() - start < 0.1, "__enter__ makes one try, it does not wait"
    assert str(caught.value) == f"Failed to acquire lock: {lock_path}"
    holder.release()


def test_context_manager_releases_on_exception(lock_path: Path) -> None:
    lock = ProcessLock(lock_path)
    with pytest.raises(KeyError):
        with lock:
            raise KeyError("boom")
    assert lock._fd is None
    assert ProcessLock(lock_path).acquire()


# ----------------------------------------------------- stale detection


def _write(lock_path: Path, contents: object) -> None:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path.write_text(contents if isinstance(contents, str) else json.dumps(contents))


def test_is_stale_for_a_dead_pid(lock_path: Path, dead_pid: int) -> None:
    _write(lock_path, {"pid": dead_pid, "acquired_at": time.time()})
    assert ProcessLock(lock_path)._is_stale_lock() is True


@pytest.mark.parametrize("contents", ["", "   \n", "{not json", "[1, 2", '{"acquired_at": 1.0}', "[1, 2]"])
def test_is_stale_for_empty_invalid_or_pidless_files(lock_path: Path, contents: str) -> None:
    _write(lock_path, contents)
    assert ProcessLock(lock_path)._is_stale_lock() is True


def test_is_stale_for_binary_garbage(lock_path: Path) -> None:
    lock_path.parent.mkdir(parents=True)
    lock_path.write_bytes(b"\xff\xfe\x00garbage")
    assert ProcessLock(lock_path)._is_stale_lock() is True


def test_is_not_stale_for_our_own_pid(lock_path: Path) -> None:
    _write(lock_path, {"pid": os.getpid(), "acquired_at": time.time()})
    assert ProcessLock(lock_path)._is_stale_lock() is False
    _write(lock_path, {"pid": os.getpid(), "acquired_at": 0.0})
    assert ProcessLock(lock_path)._is_stale_lock() is False


def test_is_not_stale_for_a_missing_file(lock_path: Path) -> None:
    assert ProcessLock(lock_path)._is_stale_lock() is False


def test_is_stale_when_older_than_the_timeout_even_if_alive(lock_path: Path) -> None:
    _write(lock_path, {"pid": os.getpid(), "acquired_at": time.time() - 7200})
    assert ProcessLock(lock_path)._is_stale_lock() is True
    assert ProcessLock(lock_path, stale_timeout=10_000)._is_stale_lock() is False


def test_age_is_checked_before_liveness(lock_path: Path) -> None:
    _write(lock_path, {"pid": 12345, "acquired_at": time.time() - 7200})
    with mock.patch("compat.locking.os.kill") as kill:
        assert ProcessLock(lock_path)._is_stale_lock() is True
    kill.assert_not_called()


def test_os_kill_oserror_means_stale(lock_path: Path) -> None:
    _write(lock_path, {"pid": 4242, "acquired_at": 0.0})
    with mock.patch("compat.locking.os.kill", side_effect=OSError) as kill:
        assert ProcessLock(lock_path)._is_stale_lock() is True
    kill.assert_called_with(4242, 0)


def test_os_kill_permission_error_means_alive(lock_path: Path) -> None:
    _write(lock_path, {"pid": 1, "acquired_at": 0.0})
    with mock.patch("compat.locking.os.kill", side_effect=PermissionError):
        assert ProcessLock(lock_path)._is_stale_lock() is False


def test_other_errors_mean_not_stale(lock_path: Path) -> None:
    _write(lock_path, {"pid": "not-a-number", "acquired_at": 0.0})
    assert ProcessLock(lock_path)._is_stale_lock() is False


@pytest.mark.parametrize("contents", ["", "garbage{", '{"acquired_at": 5.0}', {"pid": 99999999, "acquired_at": 1.0}])
def test_acquire_over_leftover_files_rewrites_them(lock_path: Path, contents: object) -> None:
    _write(lock_path, contents)
    lock = ProcessLock(lock_path)
    assert lock.acquire() is True
    assert lock._fd is not None and lock._lock_count == 1
    assert _holder_info(lock_path)["pid"] == os.getpid()
    lock.release()


def test_stale_detection_runs_only_when_flock_fails(lock_path: Path) -> None:
    _write(lock_path, {"pid": 4242, "acquired_at": 1.0})
    with mock.patch("compat.locking.os.kill") as kill:
        lock = ProcessLock(lock_path)
        assert lock.acquire() is True
    kill.assert_not_called()
    lock.release()


def test_empty_lock_file_does_not_block(lock_path: Path) -> None:
    _write(lock_path, "")
    with ProcessLock(lock_path) as lock:
        assert lock.is_locked()


def test_dead_pid_in_an_unlocked_file_is_taken(lock_path: Path) -> None:
    _write(lock_path, {"pid": 99999999, "acquired_at": time.time()})
    lock = ProcessLock(lock_path)
    assert lock.acquire()
    assert lock._fd is not None and lock._lock_count == 1
    assert _holder_info(lock_path)["pid"] == os.getpid()
    lock.release()


def test_held_lock_of_a_dead_pid_with_zero_time_is_stolen(lock_path: Path, raw_holder: Callable[[object], int]) -> None:
    if not pid_is_dead(999999):
        pytest.skip("pid 999999 is alive here")
    raw_holder({"pid": 999999, "acquired_at": 0.0})
    lock = ProcessLock(lock_path)
    assert lock.acquire() is True
    assert _holder_info(lock_path)["pid"] == os.getpid()
    lock.release()


def test_held_lock_with_patched_kill_is_recovered_on_a_new_inode(
    lock_path: Path, raw_holder: Callable[[object], int]
) -> None:
    old_fd = raw_holder({"pid": 88888888, "acquired_at": time.time()})
    with mock.patch("compat.locking.os.kill", side_effect=OSError) as kill:
        lock = ProcessLock(lock_path)
        assert lock.acquire() is True
    assert mock.call(88888888, 0) in kill.call_args_list
    assert os.stat(lock_path).st_ino != os.fstat(old_fd).st_ino, "recovery replaces the file"
    assert os.fstat(lock._fd).st_ino == os.stat(lock_path).st_ino  # type: ignore[arg-type]
    assert _holder_info(lock_path)["pid"] == os.getpid()
    assert ProcessLock(lock_path).acquire() is False, "the recovered lock excludes others"
    lock.release()


def test_stale_lock_is_recovered_fast_despite_a_long_timeout(
    lock_path: Path, raw_holder: Callable[[object], int], dead_pid: int
) -> None:
    raw_holder({"pid": dead_pid, "acquired_at": time.time()})
    lock = ProcessLock(lock_path)
    start = time.monotonic()
    assert lock.acquire(timeout=2.0) is True
    assert time.monotonic() - start < 1.0
    lock.release()


def test_held_lock_with_empty_file_is_stale(lock_path: Path, raw_holder: Callable[[object], int]) -> None:
    raw_holder("")
    lock = ProcessLock(lock_path)
    assert lock.acquire() is True
    lock.release()


def test_live_holder_is_not_stolen(lock_path: Path, raw_holder: Callable[[object], int]) -> None:
    raw_holder({"pid": os.getpid(), "acquired_at": time.time()})
    assert ProcessLock(lock_path).acquire(timeout=0.1) is False


def test_live_holder_older_than_stale_timeout_is_taken_over(
    lock_path: Path, raw_holder: Callable[[object], int]
) -> None:
    raw_holder({"pid": os.getpid(), "acquired_at": time.time()})
    lock = ProcessLock(lock_path, stale_timeout=0.3)
    start = time.monotonic()
    assert lock.acquire(timeout=3.0) is True
    assert 0.25 <= time.monotonic() - start < 3.0
    lock.release()


def test_holder_that_writes_its_pid_during_the_recheck_is_not_stolen(
    lock_path: Path, raw_holder: Callable[[object], int]
) -> None:
    """A holder that has just locked (file still empty) gets the recheck pause to write its pid."""
    raw_holder("")

    def holder_finishes_writing(_seconds: float) -> None:
        lock_path.write_text(json.dumps({"pid": os.getpid(), "acquired_at": time.time()}))

    with mock.patch("compat.locking.time.sleep", side_effect=holder_finishes_writing):
        assert ProcessLock(lock_path).acquire() is False


def test_recovery_is_serialised_by_a_guard(lock_path: Path, raw_holder: Callable[[object], int], dead_pid: int) -> None:
    raw_holder({"pid": dead_pid, "acquired_at": time.time()})
    guard_fd = os.open(f"{lock_path}.guard", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(guard_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert ProcessLock(lock_path).acquire() is False, "another recovery is in progress"
    finally:
        os.close(guard_fd)
    lock = ProcessLock(lock_path)
    assert lock.acquire() is True
    lock.release()


def test_a_file_replaced_between_open_and_flock_is_not_trusted(
    lock_path: Path, raw_holder: Callable[[object], int]
) -> None:
    """Locking an inode that no longer has the lock's name would let two holders coexist."""
    _write(lock_path, "")
    real_open = compat.locking._open_lock_file
    calls = {"n": 0}

    def open_then_replace(path: Path) -> int:
        fd = real_open(path)
        calls["n"] += 1
        if calls["n"] == 1:
            lock_path.unlink()
            raw_holder({"pid": os.getpid(), "acquired_at": time.time()})
        return fd

    with mock.patch("compat.locking._open_lock_file", side_effect=open_then_replace):
        lock = ProcessLock(lock_path)
        assert lock.acquire() is False
    assert lock._fd is None


def test_forked_child_does_not_release_the_parents_lock(lock_path: Path) -> None:
    lock = ProcessLock(lock_path)
    assert lock.acquire()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if lock.is_locked():
                code |= 1
            lock.release()
            if ProcessLock(lock_path).acquire():
                code |= 2
        except BaseException:
            code |= 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert lock.is_locked() and lock._lock_count == 1
    assert ProcessLock(lock_path).acquire() is False
    lock.release()


# ------------------------------------------------------- real processes

LOCK_SERVER = r"""
import json, os, subprocess, sys, time
from compat.locking import ProcessLock

lock = ProcessLock(sys.argv[1])
print("ready", os.getpid(), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "acquire":
        ok = lock.acquire(float(cmd[1]) if len(cmd) > 1 else None)
        print("acquired" if ok else "failed", lock._lock_count, flush=True)
    elif cmd[0] == "release":
        lock.release()
        print("released", lock._lock_count, flush=True)
    elif cmd[0] == "hold_for":
        assert lock.acquire()
        print("holding", flush=True)
        time.sleep(float(cmd[1]))
        lock.release()
        print("released", lock._lock_count, flush=True)
    elif cmd[0] == "orphan":
        # Hand the locked descriptor to a grandchild that outlives us, then die without releasing.
        assert lock.acquire()
        grandchild = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"],
            stdin=sys.stdin.fileno(), stdout=subprocess.DEVNULL, pass_fds=(lock._fd,),
        )
        print("orphaned", grandchild.pid, flush=True)
        os._exit(0)
"""

COUNTER_WORKER = r"""
import os, sys
from compat.locking import ProcessLock

lock_path, counter, marker, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
lock = ProcessLock(lock_path)
print("ready", flush=True)
sys.stdin.readline()
for _ in range(rounds):
    if not lock.acquire(timeout=30):
        sys.exit(2)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        sys.exit(3)
    os.close(fd)
    with open(counter) as f:
        value = int(f.read())
    with open(counter, "w") as f:
        f.write(str(value + 1))
    os.unlink(marker)
    lock.release()
print("done", flush=True)
"""


def test_mutual_exclusion_across_processes(tmp_path: Path, spawn: SpawnFn) -> None:
    counter, marker = tmp_path / "counter", tmp_path / "inside"
    counter.write_text("0")
    rounds = 150
    workers = [
        spawn(COUNTER_WORKER, str(tmp_path / "x.lock"), str(counter), str(marker), str(rounds)) for _ in range(3)
    ]
    for worker in workers:
        worker.expect("ready")
    for worker in workers:
        worker.send("go")
    for worker in workers:
        worker.expect("done", timeout=60)
        assert worker.finish() == 0
    assert int(counter.read_text()) == 3 * rounds


def test_timeout_and_release_across_processes(lock_path: Path, spawn: SpawnFn) -> None:
    child = spawn(LOCK_SERVER, str(lock_path))
    child_pid = int(child.expect("ready").split()[1])
    child.send("acquire")
    child.expect("acquired 1")
    assert _holder_info(lock_path)["pid"] == child_pid

    mine = ProcessLock(lock_path)
    assert mine._is_stale_lock() is False, "a live holder in another process is not stale"
    start = time.monotonic()
    assert mine.acquire(timeout=0.3) is False
    assert 0.25 <= time.monotonic() - start <= 0.4

    child.send("release")
    child.expect("released 0")
    assert mine.acquire() is True
    assert _holder_info(lock_path)["pid"] == os.getpid()
    child.send("acquire 0.1")
    child.expect("failed 0")
    mine.release()
    child.send("acquire")
    child.expect("acquired 1")


def test_waiting_acquire_succeeds_when_another_process_releases(lock_path: Path, spawn: SpawnFn) -> None:
    child = spawn(LOCK_SERVER, str(lock_path))
    child.expect("ready")
    child.send("hold_for 0.2")
    child.expect("holding")
    mine = ProcessLock(lock_path)
    start = time.monotonic()
    assert mine.acquire(timeout=1.0) is True
    assert 0.15 <= time.monotonic() - start <= 1.0
    child.expect("released 0")
    mine.release()


def test_reentrancy_in_another_process(lock_path: Path, spawn: SpawnFn) -> None:
    child = spawn(LOCK_SERVER, str(lock_path))
    child.expect("ready")
    child.send("acquire")
    child.expect("acquired 1")
    child.send("acquire 5")
    child.expect("acquired 2")
    child.send("release")
    child.expect("released 1")
    mine = ProcessLock(lock_path)
    assert mine.acquire() is False
    child.send("release")
    child.expect("released 0")
    assert mine.acquire() is True
    mine.release()


def test_lock_of_a_killed_process_is_free(lock_path: Path, spawn: SpawnFn) -> None:
    child = spawn(LOCK_SERVER, str(lock_path))
    child_pid = int(child.expect("ready").split()[1])
    child.send("acquire")
    child.expect("acquired 1")
    child.kill()
    assert _holder_info(lock_path)["pid"] == child_pid
    mine = ProcessLock(lock_path)
    assert mine.acquire() is True
    assert _holder_info(lock_path)["pid"] == os.getpid()
    mine.release()


def test_stale_lock_of_a_dead_process_is_recovered(lock_path: Path, spawn: SpawnFn) -> None:
    """The dead holder's descriptor lives on in an orphan, so the flock stays held: only stale recovery helps."""
    child = spawn(LOCK_SERVER, str(lock_path))
    child_pid = int(child.expect("ready").split()[1])
    child.send("orphan")
    grandchild_pid = int(child.expect("orphaned").split()[1])
    try:
        assert child.proc.wait(timeout=20) == 0
        assert _holder_info(lock_path)["pid"] == child_pid
        old_inode = os.stat(lock_path).st_ino

        probe_fd = os.open(lock_path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe_fd)

        mine = ProcessLock(lock_path)
        assert mine._is_stale_lock() is True
        start = time.monotonic()
        assert mine.acquire(timeout=2.0) is True
        assert time.monotonic() - start < 1.0
        assert os.stat(lock_path).st_ino != old_inode
        assert _holder_info(lock_path)["pid"] == os.getpid()
        assert ProcessLock(lock_path).acquire() is False
        mine.release()
    finally:
        assert child.proc.stdin is not None
        child.proc.stdin.close()
        assert wait_until(lambda: _pid_gone(grandchild_pid), timeout=20)


def _pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_module_uses_os_at_call_time() -> None:
    assert compat.locking.os is os


def test_a_file_held_shared_by_commits_is_not_taken_for_stale(lock_path: Path, dead_pid: int) -> None:
    """A transaction manager's commits hold the lock file shared and write no pid; a ProcessLock finding
    a dead pid in it waits for them instead of unlinking the file under them."""
    from compat.tx_manager import _CommitGate

    _write(lock_path, {"pid": dead_pid, "acquired_at": time.time()})
    inode = lock_path.stat().st_ino
    gate = _CommitGate.enter(ProcessLock(lock_path), timeout=1.0)
    explicit = ProcessLock(lock_path)
    try:
        assert explicit.acquire(timeout=0.3) is False
        assert lock_path.stat().st_ino == inode
    finally:
        gate.leave()
    assert explicit.acquire(timeout=1.0) is True
    assert lock_path.stat().st_ino == inode
    explicit.release()
