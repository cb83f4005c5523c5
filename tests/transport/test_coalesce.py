"""Burst coalescing (transport/coalesce.py): the window's states, the shared merge, and a
writer flat out on a real mesh sending few frames while a lone write goes out at once."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from pycrdt import Doc, Map

from replica.replica import Replica
from transport.coalesce import FIRST_WINDOW, MAX_WINDOW, BurstWindow, RunMerger

from tests.transport.meshkit import eventually, mesh, running, wait_converged


async def test_a_window_ends_at_the_first_quiet_turn_and_resets() -> None:
    window = BurstWindow()
    assert not window.in_burst()
    window.sent()
    assert window.in_burst()
    window.window = MAX_WINDOW
    queue = [b"u"]
    await window.gather(queue.__len__, lambda: False)
    assert window.window == FIRST_WINDOW, "a window that ended quiet resets"
    loop = asyncio.get_running_loop()
    started = loop.time()
    await window.gather(queue.__len__, lambda: False)
    assert window.window == FIRST_WINDOW
    assert loop.time() - started < FIRST_WINDOW * 20, "a quiet first window returns after one turn"


async def test_a_stream_doubles_the_window_up_to_its_bound() -> None:
    window = BurstWindow()
    queue: list[bytes] = [b"first"]
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            queue.append(b"u")
            await asyncio.sleep(0)

    producer = asyncio.create_task(produce())
    try:
        seen = []
        for _ in range(8):
            await window.gather(queue.__len__, lambda: False)
            seen.append(window.window)
        assert seen[0] == FIRST_WINDOW * 2
        assert seen == sorted(seen) and seen[-1] == MAX_WINDOW
        assert max(seen) <= MAX_WINDOW
    finally:
        stop.set()
        await producer


async def test_a_full_batch_ends_the_window_without_changing_it() -> None:
    window = BurstWindow()
    queue: list[bytes] = [b"first"]

    async def produce() -> None:
        for _ in range(100):
            queue.append(b"u")
            await asyncio.sleep(0)

    producer = asyncio.create_task(produce())
    await window.gather(queue.__len__, lambda: len(queue) >= 5)
    assert 5 <= len(queue) < 100
    assert window.window == FIRST_WINDOW
    await producer


def _updates(count: int) -> tuple[bytes, list[bytes]]:
    """A base state and `count` single-field updates on it."""
    doc: Doc = Doc()
    tasks = doc.get("tasks", type=Map)
    tasks["t"] = Map({"status": "pending"})
    base = doc.get_update()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for index in range(count):
        tasks["t"]["status"] = f"s{index}"
    return base, updates


def _state(base: bytes, *updates: bytes) -> dict[str, object]:
    doc: Doc = Doc()
    doc.apply_update(base)
    for update in updates:
        doc.apply_update(update)
    return doc.get("tasks", type=Map).to_py()


def test_the_merge_of_a_run_is_shared_by_whoever_sends_the_same_run() -> None:
    base, updates = _updates(20)
    merger = RunMerger()
    assert merger.merge(updates[:1]) is updates[0]
    first = merger.merge(list(updates))
    assert merger.merge(list(updates)) is first, "the same run (the same bytes objects) is merged once"
    assert _state(base, first) == _state(base, *updates)
    copies = [bytes(bytearray(update)) for update in updates]
    other = merger.merge(copies)
    assert other is not first and _state(base, other) == _state(base, *updates)
    shorter = merger.merge(copies[:10])
    assert _state(base, shorter) == _state(base, *updates[:10])


async def test_a_writer_flat_out_sends_few_frames_and_a_lone_write_its_own() -> None:
    writer = Replica.memory("writer")
    readers = [Replica.memory(f"reader{index}") for index in range(3)]
    ids = [writer.tasks.create(f"task {index}").id for index in range(50)]
    node = mesh(writer)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(running(node))
        for reader in readers:
            await stack.enter_async_context(running(mesh(reader, listen=None, peers=[node.url])))
        await eventually(lambda: len(node.connections()) == 3
                         and all(conn.synced_at is not None for conn in node.connections()), what="sync")
        await wait_converged(writer, *readers, timeout=20)
        writes = 2000
        for index in range(writes):
            writer.tasks.update(ids[index % len(ids)], status="completed" if index % 2 else "pending")
            await asyncio.sleep(0)
        await wait_converged(writer, *readers, timeout=30)
        for conn in node.connections():
            assert conn.counters["updates_batched"] >= writes
            assert conn.counters["update_frames_out"] * 10 <= writes, conn.counters
        await eventually(lambda: not any(conn._burst.in_burst() for conn in node.connections()),
                         what="the burst to end")
        before = [conn.counters["update_frames_out"] for conn in node.connections()]
        writer.tasks.update(ids[0], title="a lone write")
        await wait_converged(writer, *readers, timeout=10)
        assert [conn.counters["update_frames_out"] for conn in node.connections()] == [n + 1 for n in before]


async def test_paced_writes_after_a_flood_bring_the_first_window_back() -> None:
    window = BurstWindow()
    window.window = MAX_WINDOW
    queue: list[bytes] = [b"first"]

    async def paced() -> None:
        for _ in range(3):
            await asyncio.sleep(MAX_WINDOW / 4)
            queue.append(b"u")

    producer = asyncio.create_task(paced())
    await window.gather(queue.__len__, lambda: False)
    assert window.window == FIRST_WINDOW, "a few writes per window are not a stream: the next write goes out at once"
    await producer
