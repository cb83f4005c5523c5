"""A peer that stops reading: the sender's queue stays bounded and the peer is resynced."""

from __future__ import annotations

import asyncio
import socket
import time

from replica.replica import Replica
from transport.limits import Limits

from tests.transport.meshkit import converged, eventually, mesh, running, wait_converged

QUEUE_ITEMS = 64
QUEUE_BYTES = 64 * 1024


def set_send_buffer(ws: object, size: int) -> None:
    """Set a connection's kernel send buffer (small: a paused reader stalls the sender soon)."""
    sock = ws.transport.get_extra_info("socket")  # type: ignore[attr-defined]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


async def test_stalled_reader_does_not_grow_the_senders_memory_and_converges_after() -> None:
    a, b = Replica.memory("a"), Replica.memory("b")
    node_a = mesh(a, limits=Limits(send_queue_messages=QUEUE_ITEMS, send_queue_bytes=QUEUE_BYTES))
    async with running(node_a):
        node_b = mesh(b, listen=None, peers=[node_a.url])
        async with running(node_b):
            a.tasks.create("before the stall")
            await wait_converged(a, b)
            sender, reader = node_a.connections()[0], node_b.connections()[0]
            set_send_buffer(sender.ws, 16 * 1024)

            async def write(title: str) -> None:
                a.tasks.create(title, description="p" * 20000)
                assert len(sender.queue) <= QUEUE_ITEMS and sender.queue.size_bytes <= QUEUE_BYTES
                await asyncio.sleep(0.0005)

            for index in range(100):
                await write(f"healthy {index}")
            assert sender.queue.overflows == 0, "a reading peer keeps up at this pace"
            written = 100
            reader.ws.transport.pause_reading()
            deadline = time.monotonic() + 30
            while sender.queue.overflows < 1 or sender.queue.dropped_items < 200:
                assert time.monotonic() < deadline, "the sender never filled its queue"
                await write(f"while stalled {written}")
                written += 1
            assert written * 20000 > 4 * QUEUE_BYTES
            assert sender.queue.high_water_items <= QUEUE_ITEMS
            assert sender.queue.high_water_bytes <= QUEUE_BYTES
            assert not converged(a, b)
            set_send_buffer(sender.ws, 4 * 1024 * 1024)
            reader.ws.transport.resume_reading()
            await wait_converged(a, b, timeout=30)
            assert sender.counters["resyncs"] >= 1
            assert node_a.connections() == (sender,), "resynced on the same connection, not reconnected"
            assert len(b.tasks) == written + 1
            b.tasks.create("after the stall")
            await eventually(lambda: len(a.tasks) == written + 2, what="b's write after the stall")
