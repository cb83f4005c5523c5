"""Finalizers never block: dropped compat objects are settled by the registries, not by the collector.

Both patterns that once hung whole test processes are driven deterministically here (the
finalizer run while its registry's lock is held by the same thread, and by another thread
waiting on the finalizing one), then soaked with an aggressive collector from 4 threads
under a watchdog that fails with every thread's stack instead of hanging.
"""

from __future__ import annotations

import gc
import random
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

import compat.managed_wal as managed_wal
import compat.sharing as sharing
from compat.guard import ConcurrencyGuard
from compat.managed_wal import ManagedWAL
from compat.registry import OnceMap, RefCountedRegistry
from compat.tx_manager import TransactionManager
from compat.types import Task
from compat.versioned_store import VersionedStore
from replica import Replica

DEADLINE = 10.0
"""Seconds a step that must not block may take before the test calls it a hang."""


def _finishes(action: Callable[[], None], seconds: float = DEADLINE) -> bool:
    """Run ``action`` on a daemon thread; True if it returned within ``seconds`` (a hang stays behind)."""
    errors: List[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if errors:
        raise errors[0]
    return not thread.is_alive()


class _Cycle:
    """Keeps a compat object reachable only through a reference cycle, so only the cyclic collector frees it."""

    def __init__(self, held: object) -> None:
        self.held = held
        self.me = self


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.collect()


def test_a_wal_collected_while_its_thread_holds_the_registry_lock_does_not_block(tmp_path: Path) -> None:
    gc.disable()
    try:
        _Cycle(ManagedWAL(tmp_path / "wal"))
        registry = managed_wal._FILES

        def collect_under_the_lock() -> None:
            with registry._lock:
                gc.collect()

        assert _finishes(collect_under_the_lock), "the finalizer waited on a lock its own thread held"
    finally:
        gc.enable()
    assert managed_wal._FILES.get((tmp_path / "wal").resolve()) is None, "the dropped WAL was not settled"


def test_a_replica_lease_collected_while_its_thread_holds_the_registry_lock_does_not_block(tmp_path: Path) -> None:
    gc.disable()
    try:
        _Cycle(VersionedStore(tmp_path / "store"))

        def collect_under_the_lock() -> None:
            with sharing._REGISTRY._lock:
                gc.collect()

        assert _finishes(collect_under_the_lock), "the finalizer waited on a lock its own thread held"
    finally:
        gc.enable()
    assert sharing.find_open(tmp_path / "store") is None, "the dropped store's replica stayed open"


def test_a_finalizer_on_another_thread_does_not_wait_for_a_thread_that_waits_for_it(tmp_path: Path) -> None:
    store = VersionedStore(tmp_path / "store")
    finalizer = store._lease._finalizer
    registry = sharing._REGISTRY
    outcome: List[bool] = []

    def holder() -> None:
        with registry._lock:
            finalizing = threading.Thread(target=finalizer, daemon=True)
            finalizing.start()
            finalizing.join(DEADLINE)
            outcome.append(not finalizing.is_alive())

    assert _finishes(holder, DEADLINE * 2)
    assert outcome == [True], "the finalizer on the second thread waited on the registry lock"
    assert sharing.find_open(tmp_path / "store") is None
    del store


def test_no_registry_lock_is_held_while_a_replica_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: List[bool] = []
    real_open = Replica.open

    def open_and_collect_on_a_new_thread(*args: object, **kwargs: object) -> Replica:
        seen.append(sharing._REGISTRY._lock.locked())
        assert _finishes(lambda: sharing.open_directories()), "a thread started during open waited on the registry"
        return real_open(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Replica, "open", open_and_collect_on_a_new_thread)
    with VersionedStore(tmp_path / "store") as store:
        store.write(Task(id="T-1", title="opened"))
    assert seen == [False]


def test_no_registry_lock_is_held_while_a_shared_wal_file_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: List[bool] = []
    real_init = managed_wal._WalFile.__init__

    def init_and_check(self: managed_wal._WalFile, *args: object) -> None:
        seen.append(managed_wal._FILES._lock.locked())
        real_init(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(managed_wal._WalFile, "__init__", init_and_check)
    with ManagedWAL(tmp_path / "wal") as wal:
        wal.log("tx", "TX_BEGIN", {})
    assert seen == [False]


def test_callers_for_one_key_wait_for_its_opening_and_share_it() -> None:
    opened: List[int] = []
    gate = threading.Event()
    registry: RefCountedRegistry[str, int] = RefCountedRegistry("test value", lambda value: None)

    def slow_open() -> int:
        gate.wait(DEADLINE)
        opened.append(1)
        return len(opened)

    entries: List[object] = []
    threads = [threading.Thread(target=lambda: entries.append(registry.acquire("k", slow_open))) for _ in range(4)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(DEADLINE)
    assert opened == [1] and len(entries) == 4 and len({id(e) for e in entries}) == 1
    for entry in entries:
        registry.release(entry)  # type: ignore[arg-type]
    assert registry.get("k") is None


def test_a_failed_open_leaves_nothing_and_the_next_caller_opens_again() -> None:
    closed: List[int] = []
    registry: RefCountedRegistry[str, int] = RefCountedRegistry("test value", closed.append)

    def failing() -> int:
        raise OSError("disk on fire")

    with pytest.raises(OSError):
        registry.acquire("k", failing)
    entry = registry.acquire("k", lambda: 7)
    registry.release_later(entry)
    assert closed == []
    assert registry.keys() == [] and closed == [7]


def test_once_map_builds_one_value_per_key_outside_its_lock() -> None:
    class Key:
        pass

    once: OnceMap[Key, int] = OnceMap()
    key = Key()
    built: List[bool] = []

    def build() -> int:
        built.append(once._lock.locked())
        return 5

    assert once.get(key, build) == 5 and once.get(key, build) == 5
    assert built == [False]


def _dump_stacks() -> str:
    frames = sys._current_frames()
    parts = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or -1)
        if frame is not None:
            parts.append(f"--- {thread.name}\n" + "".join(traceback.format_stack(frame)))
    return "\n".join(parts)


SOAK_SECONDS = 6.0


def test_soak_dropping_compat_objects_under_an_aggressive_collector_from_four_threads(tmp_path: Path) -> None:
    stop = threading.Event()
    errors: List[str] = []
    rounds = [0] * 4

    def churn(worker: int) -> None:
        rng = random.Random(worker)
        shared_dir = tmp_path / f"shared-{worker % 2}"
        own_dir = tmp_path / f"own-{worker}"
        n = 0
        try:
            while not stop.is_set():
                n += 1
                choice = rng.randrange(5)
                if choice == 0:
                    manager = TransactionManager(shared_dir / "got")
                    tx = manager.begin()
                    manager.write(tx, Task(id=f"T-{worker}-{n}", title="soak"))
                    manager.commit(tx)
                    if rng.random() < 0.5:
                        manager.close()
                    del manager
                elif choice == 1:
                    store = VersionedStore(own_dir / "store")
                    store.write(Task(id=f"S-{n}", title="soak"))
                    if rng.random() < 0.5:
                        _Cycle(store)
                    del store
                elif choice == 2:
                    wal = ManagedWAL(shared_dir / "wal")
                    wal.log(f"tx-{worker}-{n}", "TX_BEGIN", {})
                    _Cycle(wal)
                    del wal
                elif choice == 3:
                    guard = ConcurrencyGuard(own_dir / "guard")
                    target = own_dir / "file.txt"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(str(n))
                    guard.record_snapshot(target, str(n), f"turn-{n}")
                    if rng.random() < 0.5:
                        guard.close()
                    del guard
                else:
                    sharing.open_directories()
                rounds[worker] += 1
        except Exception:
            errors.append(traceback.format_exc())

    gc.set_threshold(1, 1, 1)
    threads = [threading.Thread(target=churn, args=(w,), name=f"churn-{w}", daemon=True) for w in range(4)]
    for thread in threads:
        thread.start()
    stop.wait(SOAK_SECONDS)
    stop.set()
    watchdog_end = time.monotonic() + 60.0
    for thread in threads:
        thread.join(max(0.0, watchdog_end - time.monotonic()))
    hung = [thread.name for thread in threads if thread.is_alive()]
    gc.set_threshold(700, 10, 10)
    if hung:
        pytest.fail(f"threads {hung} hung; stacks:\n{_dump_stacks()}")
    assert not errors, errors[0]
    assert all(count > 0 for count in rounds), rounds
    gc.collect()
    assert sharing.open_directories() == [], "dropped objects were never settled"
