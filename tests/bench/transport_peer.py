"""One process of a transport benchmark, driven by JSON lines on stdin, answering JSON lines on stdout.

Roles:
  ours             a Replica (on disk, LAZY, or in memory) with a Mesh that may listen at
                   start and may dial later ("join");
  theirs-server    pycrdt.websocket's WebsocketServer behind `websockets` (compression off);
  theirs-client    a pycrdt Doc and a pycrdt Provider that connects on "join".

Every time is `time.clock_gettime_ns(CLOCK_MONOTONIC)`, one clock shared by every process
of the machine, so times taken in two processes can be subtracted. A reader records,
after each update it applies, (time, state vector); `expect` answers with the first
time at which the writer's clock reached a given value: the moment the write became
visible there.

Commands: info, write {n, start, yield_every}, write_paced {n, start, interval},
expect {client, clock}, reached {client, clocks}, join {url}, raw_catchup, stats, quit.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import logging
import os
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

# run as a script from anywhere: make the repository importable
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pycrdt import Doc, Map  # noqa: E402

from replica.statevector import decode_state_vector  # noqa: E402

CLOCK = time.CLOCK_MONOTONIC


def now() -> int:
    """Nanoseconds on the machine-wide monotonic clock."""
    return time.clock_gettime_ns(CLOCK)


def status_value(i: int) -> str:
    """The status written by update number i (alternating, so every write changes something)."""
    return "completed" if i % 2 else "pending"


class Progress:
    """What a reader has seen: (time, state vector bytes) after every applied update, and waiters."""

    def __init__(self) -> None:
        self.times: list[int] = []
        self.vectors: list[bytes] = []
        self.waiters: list[tuple[int, int, asyncio.Future[int]]] = []

    def record(self, state_vector: bytes) -> None:
        """Note an applied update (called right after it was applied, from any thread)."""
        self.times.append(now())
        self.vectors.append(state_vector)
        if self.waiters:
            loop = self.waiters[0][2].get_loop()
            loop.call_soon_threadsafe(self._wake)

    def _clock(self, index: int, client: int) -> int:
        return decode_state_vector(self.vectors[index]).get(client, 0)

    def first_reached(self, client: int, clock: int) -> int | None:
        """Time of the first record at which `client` had reached `clock` (None if not yet)."""
        count = len(self.vectors)
        if count == 0 or self._clock(count - 1, client) < clock:
            return None
        index = bisect.bisect_left(range(count), clock, key=lambda i: self._clock(i, client))
        return self.times[index]

    def _wake(self) -> None:
        remaining = []
        for client, clock, future in self.waiters:
            reached = self.first_reached(client, clock)
            if reached is not None and not future.done():
                future.set_result(reached)
            elif not future.done():
                remaining.append((client, clock, future))
        self.waiters = remaining

    async def wait(self, client: int, clock: int) -> int:
        """Wait until `client` reached `clock`; return the time it happened."""
        reached = self.first_reached(client, clock)
        if reached is not None:
            return reached
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiters.append((client, clock, future))
        self._wake()
        return await future


class RecordingDoc(Doc):  # type: ignore[type-arg]
    """A pycrdt Doc that records its state vector after every update applied to it (the reader's view)."""

    progress: Progress

    def apply_update(self, update: bytes) -> None:
        super().apply_update(update)
        self.progress.record(self.get_state())


# -- ours ------------------------------------------------------------------------------------


class Ours:
    """A replica and its mesh."""

    def __init__(self, args: argparse.Namespace) -> None:
        from replica import Replica
        from transport.limits import ReconnectPolicy
        from transport.mesh import Mesh

        self.mesh_class = Mesh  # imported up front: not part of any measured interval
        self.progress = Progress()
        if args.data:
            self.replica = Replica.open(args.data, replica_id=args.name, durability="lazy")
        else:
            self.replica = Replica.memory(args.name)
        self.ids: list[str] = []
        if args.tasks:
            with self.replica.transaction():
                self.ids = [self.replica.tasks.create(f"task {i}", id=f"T{i:05d}").id for i in range(args.tasks)]
        self.replica.on_update(lambda update, origin: self.progress.record(self.replica.state_vector())
                               if origin is not None else None)
        self.listen = ("127.0.0.1", args.port) if args.listen else None
        self.reconnect = ReconnectPolicy(initial=0.05, factor=2.0, maximum=0.5, jitter=0.5)
        self.meshes: list[Any] = []
        self.peers: list[str] = list(args.peer or [])

    async def start(self) -> dict[str, Any]:
        """Listen (if asked) and dial the peers given on the command line."""
        if self.listen is not None or self.peers:
            await self._mesh(self.peers, self.listen)
        return self.info()

    async def _mesh(self, peers: list[str], listen: tuple[str, int] | None) -> Any:
        mesh = self.mesh_class(self.replica, room="bench", listen=listen, peers=peers, reconnect=self.reconnect,
                    awareness_interval=3600)
        self.meshes.append(mesh)
        await mesh.start()
        return mesh

    def info(self) -> dict[str, Any]:
        """Client id and URL."""
        url = next((m.url for m in self.meshes if m.url), None)
        return {"client_id": self.replica.client_id, "url": url, "clock": self.clock()}

    def clock(self) -> int:
        """Our own client's clock: how many structs we wrote."""
        return decode_state_vector(self.replica.state_vector()).get(self.replica.client_id, 0)

    def write(self, index: int) -> None:
        """One typed task update (status and updated_at), like an agent's."""
        self.replica.tasks.update(self.ids[index % len(self.ids)], status=status_value(index))

    async def join(self, url: str) -> int:
        """Start dialing `url`; return the time just before."""
        t0 = now()
        await self._mesh([url], None)
        return t0

    def raw_catchup(self) -> float:
        """Seconds raw pycrdt takes to encode our whole state and apply it to an empty Doc."""
        start = now()
        update = self.replica.doc.get_update()
        Doc().apply_update(update)
        return (now() - start) / 1e9

    def raw_encode(self, path: str) -> float:
        """Seconds raw pycrdt takes to encode our whole state, which is saved to `path`."""
        start = now()
        update = self.replica.doc.get_update()
        seconds = (now() - start) / 1e9
        Path(path).write_bytes(update)
        return seconds

    def stats(self) -> dict[str, Any]:
        """Mesh totals (bytes and messages) of every mesh of this process."""
        totals: dict[str, int] = {}
        for mesh in self.meshes:
            for key, value in mesh.status()["totals"].items():
                totals[key] = totals.get(key, 0) + value
        return totals

    async def stop(self) -> None:
        """Stop the meshes and close the replica."""
        for mesh in self.meshes:
            await mesh.stop()
        self.replica.close()


# -- theirs ----------------------------------------------------------------------------------


class TheirsClient:
    """A pycrdt Doc synced by pycrdt's Provider through pycrdt.websocket's server."""

    def __init__(self, args: argparse.Namespace) -> None:
        import pycrdt.websocket  # noqa: F401  (imported up front: not part of any measured interval)
        from pycrdt import Provider
        from websockets.asyncio.client import connect

        from tests.interop.ywskit import WebsocketsChannel

        self.provider_class, self.connect, self.channel_class = Provider, connect, WebsocketsChannel
        self.progress = Progress()
        self.doc = RecordingDoc()
        self.doc.progress = self.progress
        self.tasks = self.doc.get("tasks", type=Map)
        self.count = args.tasks
        if args.tasks:
            from replica.models import iso_now

            with self.doc.transaction():
                for i in range(args.tasks):
                    self.tasks[f"T{i:05d}"] = Map({"title": f"task {i}", "status": "pending",
                                                   "updated_at": iso_now()})
        self._stack: Any = None

    async def start(self) -> dict[str, Any]:
        """Nothing to do until `join`."""
        return self.info()

    def info(self) -> dict[str, Any]:
        """Client id and clock."""
        return {"client_id": self.doc.client_id, "url": None, "clock": self.clock()}

    def clock(self) -> int:
        """Our own client's clock."""
        return decode_state_vector(self.doc.get_state()).get(self.doc.client_id, 0)

    def write(self, index: int) -> None:
        """The same Y writes as a typed task update: status and updated_at, one transaction."""
        from replica.models import iso_now

        with self.doc.transaction():
            entry = self.tasks[f"T{index % self.count:05d}"]
            entry["status"] = status_value(index)
            entry["updated_at"] = iso_now()

    async def join(self, url: str) -> int:
        """Connect a Provider to `url` (room = path); return the time just before."""
        from contextlib import AsyncExitStack

        t0 = now()
        self._stack = AsyncExitStack()
        ws = await self._stack.enter_async_context(
            self.connect(url, compression=None, max_size=None, ping_interval=None))
        channel = self.channel_class(ws, "/" + url.rsplit("/", 1)[1])
        await self._stack.enter_async_context(self.provider_class(self.doc, channel))
        return t0

    def raw_catchup(self) -> float:
        """Seconds raw pycrdt takes to encode our state and apply it to an empty Doc."""
        start = now()
        Doc().apply_update(self.doc.get_update())
        return (now() - start) / 1e9

    def stats(self) -> dict[str, Any]:
        """No transport counters here."""
        return {}

    async def stop(self) -> None:
        """Disconnect (pending updates are dropped: the benchmark already waited for them)."""
        if self._stack is not None:
            with suppress(Exception):
                await asyncio.wait_for(self._stack.aclose(), 5)


class TheirsServer:
    """pycrdt.websocket's WebsocketServer on loopback."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.port = args.port
        self._context: Any = None
        self.url: str | None = None

    async def start(self) -> dict[str, Any]:
        """Start serving room /bench."""
        from tests.interop.ywskit import pycrdt_server

        self._context = pycrdt_server("/bench", port=self.port)
        _server, port = await self._context.__aenter__()
        self.url = f"ws://127.0.0.1:{port}/bench"
        return {"client_id": None, "url": self.url, "clock": 0}

    async def stop(self) -> None:
        """Stop serving."""
        with suppress(Exception):
            await asyncio.wait_for(self._context.__aexit__(None, None, None), 5)


# -- the command loop ------------------------------------------------------------------------


def reply(message: dict[str, Any]) -> None:
    """One JSON line on stdout."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def serve(node: Any) -> None:
    """Answer commands from stdin until quit (or EOF)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    reply({"ready": True, **(await node.start())})
    while True:
        line = await reader.readline()
        if not line:
            break
        command = json.loads(line)
        op = command["op"]
        if op == "quit":
            if not isinstance(node, Ours):
                os._exit(0)  # pycrdt's Provider may wait on a closed socket: nothing left to keep
            break
        if op == "info":
            reply(node.info())
        elif op == "write":
            count, every = int(command["n"]), int(command.get("yield_every", 1))
            start_index = int(command.get("start", 0))
            t0 = now()
            for i in range(count):
                node.write(start_index + i)
                if every and (i + 1) % every == 0:
                    await asyncio.sleep(0)
            t1 = now()
            reply({"t0": t0, "t1": t1, "clock": node.clock()})
        elif op == "write_paced":
            count, interval = int(command["n"]), float(command["interval"])
            start_index = int(command.get("start", 0))
            starts, clocks = [], []
            for i in range(count):
                starts.append(now())
                node.write(start_index + i)
                await asyncio.sleep(interval)
                clocks.append(node.clock())  # after the pause: nothing else writes here
            reply({"t0": starts, "clock": clocks})
        elif op == "reached":
            client = int(command["client"])
            reply({"t": [await node.progress.wait(client, int(clock)) for clock in command["clocks"]]})
        elif op == "expect":
            t = await node.progress.wait(int(command["client"]), int(command["clock"]))
            reply({"t": t})
        elif op == "join":
            reply({"t0": await node.join(command["url"])})
        elif op == "raw_catchup":
            reply({"seconds": node.raw_catchup()})
        elif op == "raw_encode":
            reply({"seconds": node.raw_encode(command["path"])})
        elif op == "stats":
            reply(node.stats())
        else:
            reply({"error": f"unknown op {op}"})
    await node.stop()


def main() -> None:
    """Parse the role and options, then serve commands."""
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["ours", "theirs-server", "theirs-client"])
    parser.add_argument("--name", default=f"bench-{os.getpid()}")
    parser.add_argument("--data", default=None, help="ours: data directory (LAZY); default in memory")
    parser.add_argument("--listen", action="store_true", help="ours: listen on --port")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--peer", action="append", help="ours: dial this URL at start")
    parser.add_argument("--tasks", type=int, default=0, help="tasks created before anything else")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    node: Any
    if args.role == "ours":
        node = Ours(args)
    elif args.role == "theirs-server":
        node = TheirsServer(args)
    else:
        node = TheirsClient(args)
    asyncio.run(serve(node))


if __name__ == "__main__":
    main()
