"""Stateless hubs on one Redis: real `agentstate hub --redis` processes, clients spread over them.

30 agentstate clients (in-memory replicas with a Mesh dialing one hub each) on 5 rooms over
3 hubs write and converge; one hub is killed with SIGKILL mid-stream and its clients
reconnect to another hub: every write another client had seen (acknowledged) survives,
even those whose writer vanished with the hub; Redis restarts (append-only persistence)
and the hubs carry on with nothing lost; plain Yjs clients on two hubs see each other.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from pycrdt import Doc, Map

from replica.replica import Replica
from transport.mesh import Mesh

from tests.hub.hubkit import FAST_RECONNECT, HAS_NODE, YjsPeer, wait_for_line
from tests.transport.meshkit import eventually, free_port, free_ports

from .redisserver import RedisServer

AGENTSTATE = str(Path(sys.executable).parent / "agentstate")
ROOMS = [f"room-{n}" for n in range(5)]
DEADLINE = 60.0


class HubProcess:
    """`agentstate hub --redis URL` on a free loopback port."""

    def __init__(self, workdir: Path, redis_url: str, name: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            [AGENTSTATE, "hub", "--redis", redis_url, "--data", str(workdir / name), "--listen",
             f"127.0.0.1:{self.port}", "--idle", "2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for_line(self.proc, "ready hub")

    def url(self, room: str) -> str:
        """The room's URL on this hub."""
        return f"ws://127.0.0.1:{self.port}/{room}"

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM and wait (kill if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Client:
    """An in-memory replica in one room, dialing one hub."""

    def __init__(self, name: str, room: str) -> None:
        self.name = name
        self.room = room
        self.replica = Replica(Doc(), f"r-{name}")
        self.mesh: Mesh | None = None

    async def dial(self, url: str) -> None:
        """(Re)connect through the hub at `url`."""
        if self.mesh is not None:
            await self.mesh.stop()
        self.mesh = Mesh(self.replica, room=self.room, peers=[url], reconnect=FAST_RECONNECT, ping_interval=None,
                         close_timeout=1.0, follow=False)
        await self.mesh.start()

    async def stop(self) -> None:
        """Leave."""
        if self.mesh is not None:
            await self.mesh.stop()
            self.mesh = None

    def tasks(self) -> set[str]:
        """Ids of the tasks this client holds."""
        return {task.id for task in self.replica.tasks.list()}


@asynccontextmanager
async def hubs(workdir: Path, redis: RedisServer, count: int) -> AsyncIterator[list[HubProcess]]:
    """`count` hub processes on one Redis, stopped afterwards."""
    started = [HubProcess(workdir, redis.url, f"hub{n}", port) for n, port in enumerate(free_ports(count))]
    try:
        yield started
    finally:
        for hub in started:
            hub.stop()


def room_converged(clients: list[Client], room: str, expected: set[str]) -> bool:
    """Every live client of `room` holds the same tasks: `expected`, plus (only) writes of the vanished client."""
    held = [client.tasks() for client in clients if client.room == room]
    extra = held[0] - expected
    return all(tasks == held[0] for tasks in held) and expected <= held[0] and \
        all(task.startswith("T-doomed-") for task in extra)


async def test_thirty_clients_five_rooms_three_hubs_survive_a_hub_kill_and_a_redis_restart(
        tmp_path: Path, redis_server: RedisServer) -> None:
    async with hubs(tmp_path, redis_server, 3) as (h0, h1, h2):
        clients = [Client(f"c{n}", ROOMS[n % 5]) for n in range(30)]
        placement = {client.name: (h0, h1, h2)[n % 3] for n, client in enumerate(clients)}
        try:
            for client in clients:
                await client.dial(placement[client.name].url(client.room))
            written: dict[str, set[str]] = {room: set() for room in ROOMS}
            for round_ in range(3):
                for client in clients:
                    task_id = f"T-{client.name}-{round_}"
                    client.replica.tasks.create(f"{client.name} round {round_}", id=task_id)
                    written[client.room].add(task_id)
            for room in ROOMS:
                await eventually(lambda room=room: room_converged(clients, room, written[room]), timeout=DEADLINE,
                                 what=f"{room} converged over three hubs")

            # mid-stream: clients on hub 2 write, one of them vanishes with the hub
            doomed = [client for client in clients if placement[client.name] is h2]
            vanishing = doomed[0]
            acknowledged: set[str] = set()
            for index in range(20):
                task_id = f"T-doomed-{index}"
                vanishing.replica.tasks.create(f"doomed {index}", id=task_id)
                written[vanishing.room].add(task_id)
            witnesses = [c for c in clients if c.room == vanishing.room and placement[c.name] is not h2]
            await eventually(lambda: "T-doomed-9" in witnesses[0].tasks(), timeout=DEADLINE,
                             what="a client on another hub saw the doomed writes")
            acknowledged = {t for t in witnesses[0].tasks() if t.startswith("T-doomed-")}
            h2.kill()
            await vanishing.stop()
            clients.remove(vanishing)
            # what another client had seen must survive; the rest of the vanished writer's work may or may not
            written[vanishing.room] = {t for t in written[vanishing.room] if not t.startswith("T-doomed-")}
            written[vanishing.room] |= acknowledged
            for client in doomed[1:]:
                await client.dial(h0.url(client.room))
                client.replica.tasks.create(f"{client.name} after the kill", id=f"T-{client.name}-moved")
                written[client.room].add(f"T-{client.name}-moved")
            for room in ROOMS:
                await eventually(lambda room=room: room_converged(clients, room, written[room]), timeout=DEADLINE,
                                 what=f"{room} converged after hub 2 was killed")
            assert acknowledged <= {t for c in clients for t in c.tasks()}

            # Redis restarts (append-only file, fsync always): the hubs reconnect, nothing is lost
            redis_server.restart()
            for client in clients[:10]:
                client.replica.tasks.create(f"{client.name} after the restart", id=f"T-{client.name}-rs")
                written[client.room].add(f"T-{client.name}-rs")
            for room in ROOMS:
                await eventually(lambda room=room: room_converged(clients, room, written[room]), timeout=DEADLINE,
                                 what=f"{room} converged after Redis restarted")
            final = {room: next(c for c in clients if c.room == room).tasks() for room in ROOMS}
        finally:
            for client in clients:
                await client.stop()

        # a newcomer on any hub gets the room from Redis alone (snapshot + stream)
        for room in ROOMS:
            newcomer = Client(f"new-{room}", room)
            try:
                await newcomer.dial(h1.url(room))
                await eventually(lambda: newcomer.tasks() == final[room], timeout=DEADLINE,
                                 what=f"a newcomer loads {room} from Redis")
            finally:
                await newcomer.stop()


@pytest.mark.skipif(not HAS_NODE, reason="needs Node.js and `npm ci` in tests/")
async def test_plain_yjs_clients_on_two_hubs_see_each_other(tmp_path: Path, redis_server: RedisServer) -> None:
    async with hubs(tmp_path, redis_server, 2) as (h0, h1):
        first = await YjsPeer.start(f"ws://127.0.0.1:{h0.port}", "shared", "on-hub-0", "on-hub-1")
        second = await YjsPeer.start(f"ws://127.0.0.1:{h1.port}", "shared", "on-hub-1", "on-hub-0")
        try:
            assert await first.expect("SEEN") == "from-on-hub-1"
            assert await second.expect("SEEN") == "from-on-hub-0"
        finally:
            first.kill()
            second.kill()
        reader = Client("reader", "shared")
        try:
            await reader.dial(h1.url("shared"))
            probe = reader.replica.doc.get("probe", type=Map)
            await eventually(lambda: probe.get("on-hub-0") == "from-on-hub-0" and probe.get("on-hub-1") == "from-on-hub-1",
                             timeout=DEADLINE, what="both Yjs clients' writes in Redis")
        finally:
            await reader.stop()
