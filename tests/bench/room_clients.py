"""Plain Yjs clients for the room benchmarks: one writer and many readers on raw websockets.

Every client speaks the y-websocket sync protocol with a pycrdt Doc of its own, so the same
harness measures a hub, `serve` and pycrdt.websocket's server. A reader records, after
each frame it applies, (time, the writer's clock); a write is visible on a reader at the
first time that clock reached it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from pycrdt import Doc, Map
from websockets.asyncio.client import ClientConnection, connect

from replica.statevector import decode_state_vector
from transport.messages import SyncStep1, SyncStep2, SyncUpdate, decode, encode

EMPTY_UPDATE = b"\x00\x00"


@dataclass
class Client:
    """One websocket and its Doc; `seen` is (time, writer clock) after every applied update."""

    ws: ClientConnection
    doc: Doc = field(default_factory=Doc)
    seen: list[tuple[float, int]] = field(default_factory=list)
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    watch_client: int | None = None

    async def run(self) -> None:
        """Answer the server's step 1, apply its step 2 and updates, record when each landed."""
        async for frame in self.ws:
            if isinstance(frame, str):
                continue
            try:
                message = decode(frame)
            except Exception:
                continue
            if isinstance(message, SyncStep1):
                await self.ws.send(encode(SyncStep2(EMPTY_UPDATE)))
            elif isinstance(message, (SyncStep2, SyncUpdate)):
                self.doc.apply_update(message.update)
                if isinstance(message, SyncStep2):
                    self.synced.set()
                if self.watch_client is not None:
                    clock = decode_state_vector(self.doc.get_state()).get(self.watch_client, 0)
                    self.seen.append((time.perf_counter(), clock))


async def open_clients(url: str | list[str], count: int,
                       headers: dict[str, str] | None = None) -> tuple[list[Client], list[asyncio.Task[None]]]:
    """`count` synced clients of the room at `url` (or at urls[i % len(urls)]): each sent step 1 and got step 2."""
    urls = [url] if isinstance(url, str) else url
    clients: list[Client] = []
    tasks: list[asyncio.Task[None]] = []
    for index in range(count):
        ws = await connect(urls[index % len(urls)], additional_headers=headers, compression=None, max_size=None,
                           ping_interval=None)
        client = Client(ws)
        clients.append(client)
        tasks.append(asyncio.create_task(client.run()))
        await ws.send(encode(SyncStep1(b"\x00")))
    async with asyncio.timeout(60):
        await asyncio.gather(*(client.synced.wait() for client in clients))
    return clients, tasks


async def close_clients(clients: list[Client], tasks: list[asyncio.Task[None]]) -> None:
    """Close every websocket and end the reader tasks."""
    await asyncio.gather(*(client.ws.close() for client in clients), return_exceptions=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def write_to_visible(url: str | list[str], clients: int, writes: int, *, interval: float,
                           warmup: int = 20) -> list[float]:
    """Milliseconds from each write on client 0 until every other client applied it, per (write, reader).

    With a list of URLs (one room on several hubs) client i dials urls[i % len(urls)]."""
    everyone, tasks = await open_clients(url, clients)
    try:
        writer, readers = everyone[0], everyone[1:]
        writer_client = writer.doc.client_id
        for reader in readers:
            reader.watch_client = writer_client
        board: Map = writer.doc.get("bench", type=Map)
        sent: list[tuple[float, int]] = []
        for index in range(warmup + writes):
            before = writer.doc.get_state()
            board["k"] = index
            update = writer.doc.get_update(before)
            clock = decode_state_vector(writer.doc.get_state())[writer_client]
            started = time.perf_counter()
            await writer.ws.send(encode(SyncUpdate(update)))
            sent.append((started, clock))
            await asyncio.sleep(interval)
        last = sent[-1][1]
        async with asyncio.timeout(120):
            while any(not r.seen or r.seen[-1][1] < last for r in readers):
                await asyncio.sleep(0.01)
        latencies: list[float] = []
        for reader in readers:
            position = 0
            for started, clock in sent[warmup:]:
                while reader.seen[position][1] < clock:
                    position += 1
                latencies.append((reader.seen[position][0] - started) * 1e3)
        return latencies
    finally:
        await close_clients(everyone, tasks)


async def throughput(writer_urls: list[str], reader_url: str, updates: int) -> float:
    """Updates per second: one writer per URL sends `updates` unpaced; until one reader (on reader_url) holds them all."""
    readers, reader_tasks = await open_clients(reader_url, 1)
    writers, writer_tasks = await open_clients(writer_urls, len(writer_urls))
    reader = readers[0]
    try:
        payloads: list[list[bytes]] = []
        for writer in writers:
            board: Map = writer.doc.get("bench", type=Map)
            frames = []
            for index in range(updates):
                before = writer.doc.get_state()
                board[f"k{index % 50}"] = index
                frames.append(encode(SyncUpdate(writer.doc.get_update(before))))
            payloads.append(frames)
        targets = {writer.doc.client_id: decode_state_vector(writer.doc.get_state())[writer.doc.client_id]
                   for writer in writers}
        started = time.perf_counter()

        async def send_all(writer: Client, frames: list[bytes]) -> None:
            for frame in frames:
                await writer.ws.send(frame)

        await asyncio.gather(*(send_all(writer, frames) for writer, frames in zip(writers, payloads)))
        async with asyncio.timeout(300):
            while True:
                state = decode_state_vector(reader.doc.get_state())
                if all(state.get(client, 0) >= clock for client, clock in targets.items()):
                    break
                await asyncio.sleep(0.005)
        return updates * len(writers) / (time.perf_counter() - started)
    finally:
        await close_clients(writers, writer_tasks)
        await close_clients(readers, reader_tasks)
