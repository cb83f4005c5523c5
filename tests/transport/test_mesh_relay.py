"""A full mesh that does not flood (transport.relay): each update crosses each link about once,
and a lost link or node loses nothing."""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress

from pycrdt import Doc, Map

from replica.replica import Replica
from transport.mesh import Mesh
from transport.messages import SyncStep1, SyncStep2, SyncUpdate, encode

from tests.transport.meshkit import (
    eventually,
    free_ports,
    mesh,
    node_url,
    raw_client,
    receive_message,
    running,
    snapshot,
    wait_converged,
)

SIZE = 8


def full_mesh(replicas: list[Replica]) -> list[Mesh]:
    """One node per replica, each listening and dialing every node before it."""
    ports = free_ports(len(replicas))
    return [
        mesh(replica, listen=("127.0.0.1", ports[i]), peers=[node_url(ports[j]) for j in range(i)])
        for i, replica in enumerate(replicas)
    ]


def settled(nodes: list[Mesh]) -> bool:
    """Every node has one connection per other node and knows each neighbour's full link set."""
    size = len(nodes)
    return all(
        len(node.connections()) == size - 1
        and all(conn.links.links is not None and len(conn.links.links) == size - 1 for conn in node.connections())
        for node in nodes
    )


def received(node: Mesh) -> tuple[int, int]:
    """(updates that changed the replica, updates that were already there) over live connections."""
    applied = sum(conn.counters["updates_applied"] for conn in node.connections())
    redundant = sum(conn.counters["updates_redundant"] for conn in node.connections())
    return applied, redundant


async def test_full_mesh_of_8_converges_and_each_update_arrives_about_once() -> None:
    replicas = [Replica.memory(f"r{i}") for i in range(SIZE)]
    nodes = full_mesh(replicas)
    async with running(*nodes):
        await eventually(lambda: settled(nodes), timeout=60, what="a settled full mesh")
        await wait_converged(*replicas, timeout=60)
        before = [received(node) for node in nodes]
        writes = 300
        for index in range(writes):
            replicas[0].tasks.create(f"task {index}", id=f"t{index}")
            if index % 10 == 0:
                await asyncio.sleep(0.002)
        await wait_converged(*replicas, timeout=120)
        assert all(len(replica.tasks) == writes for replica in replicas)
        for node, (applied_before, redundant_before) in zip(nodes[1:], before[1:]):
            applied, redundant = received(node)
            applied -= applied_before
            redundant -= redundant_before
            assert applied >= 1
            # flooding would make every update arrive from all 7 neighbours: 6 redundant copies each
            assert redundant <= max(3, applied // 5), (node.replica_id, applied, redundant)
        skipped = sum(conn.counters["relays_skipped"] for node in nodes for conn in node.connections())
        assert skipped >= writes, "the relay rule skipped the neighbours the writer reaches itself"


async def write_until(replica: Replica, prefix: str, stop: asyncio.Event, written: list[str]) -> None:
    """Create tasks on `replica` until `stop` is set (at most 2,000), yielding between writes."""
    for index in range(2000):
        if stop.is_set():
            return
        task_id = f"{prefix}-{index}"
        replica.tasks.create(f"{prefix} {index}", id=task_id)
        written.append(task_id)
        await asyncio.sleep(0.003)


def kill(node: Mesh) -> None:
    """Cut every socket of `node` at once, as a crash would (nothing more is sent or received)."""
    for conn in node.connections():
        transport = conn.ws.transport
        if transport is not None:
            transport.abort()


async def test_a_lost_link_and_a_dead_node_lose_nothing() -> None:
    replicas = [Replica.memory(f"r{i}") for i in range(SIZE)]
    nodes = full_mesh(replicas)
    async with running(*nodes):
        await eventually(lambda: settled(nodes), timeout=60, what="a settled full mesh")
        stop = asyncio.Event()
        written: list[list[str]] = [[] for _ in replicas]
        writers = [
            asyncio.create_task(write_until(replica, replica.replica_id, stop, written[i]))
            for i, replica in enumerate(replicas)
        ]
        try:
            await eventually(lambda: all(len(ids) >= 20 for ids in written), timeout=60, what="writes under way")
            link = next(conn for conn in nodes[1].connections() if conn.peer_replica_id == "r2")
            assert link.ws.transport is not None
            link.ws.transport.abort()
            await eventually(lambda: all(len(ids) >= 40 for ids in written), timeout=60, what="more writes")
            dead = nodes[3]
            kill(dead)
            await dead.stop()
            await eventually(lambda: all(len(ids) >= 60 for i, ids in enumerate(written) if i != 3),
                             timeout=60, what="writes after the crash")
        finally:
            stop.set()
            await asyncio.gather(*writers)
        survivors = [replica for i, replica in enumerate(replicas) if i != 3]
        await wait_converged(*survivors, timeout=120)
        for i, ids in enumerate(written):
            if i != 3:
                missing = [task_id for task_id in ids if task_id not in survivors[0].tasks]
                assert not missing, f"{len(missing)} writes of r{i} lost"
        repairs = sum(conn.counters["link_repairs"] for node in nodes if node is not dead
                      for conn in node.connections())
        assert repairs >= 1, "losing a link asks the neighbours for what it may have carried alone"


async def test_a_plain_yjs_client_in_the_mesh_gets_every_update() -> None:
    replicas = [Replica.memory(f"r{i}") for i in range(4)]
    nodes = full_mesh(replicas)
    async with running(*nodes):
        await eventually(lambda: settled(nodes), timeout=60, what="a settled full mesh")
        client = await raw_client(nodes[2].url)
        try:
            await receive_message(client, SyncStep1)
            doc = Doc()
            await client.send(encode(SyncStep1(doc.get_state())))
            doc.apply_update((await receive_message(client, SyncStep2)).update)
            for index in range(50):
                replicas[index % 2].tasks.create(f"task {index}", id=f"p{index}")
            deadline = time.monotonic() + 60
            tasks = doc.get("tasks", type=Map)
            while len(tasks) < 50:
                assert time.monotonic() < deadline, f"the client holds {len(tasks)} of 50 tasks"
                message = await receive_message(client, SyncUpdate, timeout=30)
                doc.apply_update(message.update)
            before = doc.get_state()
            doc.get("notes", type=Map)["from-yjs"] = "hello"
            await client.send(encode(SyncUpdate(doc.get_update(before))))
            await eventually(lambda: all("from-yjs" in snapshot(replica).get("notes", type=Map) for replica in replicas),
                             timeout=60, what="the client's write at every replica")
            await wait_converged(*replicas, timeout=60)
        finally:
            with suppress(Exception):
                await client.close()
