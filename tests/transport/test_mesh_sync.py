"""Mesh over real websockets on loopback: convergence, relaying, dedupe, reconnect, batching."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pycrdt import Doc, Map

from replica.replica import Replica
from transport import closecodes
from transport.limits import Limits
from transport.messages import (
    AwarenessEntry,
    Awareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    decode_awareness_update,
    encode,
    encode_awareness_update,
)

from tests.transport.meshkit import (
    close_code_of,
    eventually,
    free_ports,
    mesh,
    node_url,
    peer_replica_ids,
    raw_client,
    receive_message,
    running,
    snapshot,
    wait_converged,
)


async def test_two_nodes_converge_both_ways() -> None:
    a, b = Replica.memory("node-a"), Replica.memory("node-b")
    a.tasks.create("written on a before connecting")
    node_a = mesh(a)
    async with running(node_a):
        node_b = mesh(b, listen=None, peers=[node_a.url])
        async with running(node_b):
            await wait_converged(a, b)
            b.tasks.create("written on b")
            a.tasks.create("written on a")
            await wait_converged(a, b)
            assert len(a.tasks) == len(b.tasks) == 3
            assert peer_replica_ids(node_a) == ["node-b"]
            assert peer_replica_ids(node_b) == ["node-a"]
            status = node_b.status()
            assert status["peers"][0]["connected"] and status["peers"][0]["replica_id"] == "node-a"
            await eventually(lambda: node_b.status()["peers"][0]["behind"] == 0, what="b's view of a caught up")


TOPOLOGIES = {
    "line": [(1, 0), (2, 1)],
    "star": [(1, 0), (2, 0), (3, 0)],
    "full": [(i, j) for i in range(4) for j in range(4) if i != j],
}


@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
async def test_writes_anywhere_reach_everyone(topology: str) -> None:
    edges = TOPOLOGIES[topology]
    count = 1 + max(max(edge) for edge in edges)
    ports = free_ports(count)
    replicas = [Replica.memory(f"r{i}") for i in range(count)]
    nodes = [
        mesh(replica, listen=("127.0.0.1", ports[i]), peers=[node_url(ports[j]) for (k, j) in edges if k == i])
        for i, replica in enumerate(replicas)
    ]
    async with running(*nodes):
        for index, replica in enumerate(replicas):
            replica.tasks.create(f"task from r{index}")
        await wait_converged(*replicas)
        assert all(len(replica.tasks) == count for replica in replicas)
        neighbours = {i: {j for edge in edges for (k, j) in [edge, edge[::-1]] if k == i} for i in range(count)}
        await eventually(
            lambda: all(
                sorted(peer_replica_ids(node), key=str) == sorted(f"r{j}" for j in neighbours[i])
                for i, node in enumerate(nodes)
            ),
            what="one connection per neighbour",
        )


async def test_relay_through_a_middle_node() -> None:
    a, b, c = (Replica.memory(name) for name in ("a", "b", "c"))
    node_b = mesh(b)
    async with running(node_b):
        node_a = mesh(a, listen=None, peers=[node_b.url])
        node_c = mesh(c, listen=None, peers=[node_b.url])
        async with running(node_a, node_c):
            a.tasks.create("from a", id="from-a")
            await eventually(lambda: "from-a" in c.tasks, what="a's task at c via b")
            c.tasks.update("from-a", status="in_progress")
            await eventually(lambda: a.tasks.get("from-a").status.value == "in_progress", what="c's edit at a")
            await wait_converged(a, b, c)
            assert peer_replica_ids(node_a) == ["b"] and peer_replica_ids(node_c) == ["b"]


async def test_one_connection_per_pair_when_both_dial() -> None:
    a, b = Replica.memory("alpha"), Replica.memory("beta")
    port_a, port_b = free_ports(2)
    node_a = mesh(a, listen=("127.0.0.1", port_a), peers=[node_url(port_b)])
    node_b = mesh(b, listen=("127.0.0.1", port_b), peers=[node_url(port_a)])
    async with running(node_a, node_b):
        a.tasks.create("a")
        b.tasks.create("b")
        await wait_converged(a, b)

        def settled() -> bool:
            return (
                peer_replica_ids(node_a) == ["beta"]
                and peer_replica_ids(node_b) == ["alpha"]
                and node_a.connections()[0].role.value == "dialer"
                and node_b.connections()[0].role.value == "listener"
            )

        await eventually(settled, what="one connection, the one dialed by the lower replica id")
        beta_dial = next(p for p in node_b.status()["peers"] if p.get("url") == node_url(port_a))
        assert beta_dial["connected"] is False and beta_dial["last_close_code"] == 4409
        assert beta_dial["replica_id"] == "alpha"

        a.tasks.create("after dedupe")
        await wait_converged(a, b)
        assert peer_replica_ids(node_a) == ["beta"] and peer_replica_ids(node_b) == ["alpha"]


async def test_reconnect_after_listener_restart_catches_up(tmp_path: Path) -> None:
    a = Replica.open(tmp_path / "a")
    b = Replica.memory("b")
    try:
        first = mesh(a)
        await first.start()
        assert first.address is not None
        port = first.address[1]
        node_b = mesh(b, listen=None, peers=[first.url])
        async with running(node_b):
            a.tasks.create("before restart")
            await wait_converged(a, b)
            await first.stop()
            a.tasks.create("written on a while down")
            b.tasks.create("written on b while down")
            await eventually(lambda: node_b.status()["peers"][0]["connected"] is False, what="b sees a gone")
            await eventually(lambda: node_b.status()["peers"][0]["attempts"] >= 3, what="b retrying")
            second = mesh(a, listen=("127.0.0.1", port))
            async with running(second):
                await wait_converged(a, b)
                assert len(a.tasks) == len(b.tasks) == 3
    finally:
        a.close()


async def test_many_small_writes_are_batched() -> None:
    a, b = Replica.memory("a"), Replica.memory("b")
    node_a = mesh(a)
    async with running(node_a):
        node_b = mesh(b, listen=None, peers=[node_a.url])
        async with running(node_b):
            await eventually(lambda: bool(node_a.connections()) and node_a.connections()[0].synced_at is not None,
                             what="sync")
            conn = node_a.connections()[0]
            for index in range(1500):
                a.tasks.create(f"small task {index}")
            await wait_converged(a, b, timeout=20)
            frames = conn.counters["update_frames_out"]
            batched = conn.counters["updates_batched"]
            assert batched >= 1500
            assert frames * 10 <= batched, f"{frames} frames for {batched} updates"


async def test_catch_up_bigger_than_the_frame_limit_still_syncs() -> None:
    limits = Limits(max_frame_size=32 * 1024, batch_bytes=16 * 1024, byte_burst=64 * 1024 * 1024)
    a, b = Replica.memory("a"), Replica.memory("b")
    with a.transaction():
        for index in range(120):
            a.tasks.create(f"big {index}", description=f"{index}:" + "x" * 2000)
    assert len(a.diff(b.state_vector())) > 4 * limits.max_frame_size
    node_a = mesh(a, limits=limits)
    async with running(node_a):
        node_b = mesh(b, listen=None, peers=[node_a.url], limits=limits)
        async with running(node_b):
            await wait_converged(a, b, timeout=20)
            conn = node_a.connections()[0]
            assert conn.counters["split_updates"] >= 1
            assert conn.counters["split_parts"] >= 4
            assert node_a.status()["rejections"] == {} and node_b.status()["rejections"] == {}
            with b.transaction():
                for index in range(60):
                    b.tasks.create(f"big from b {index}", description="y" * 2000)
            await wait_converged(a, b, timeout=20)


async def test_plain_yjs_client_is_served_like_y_websocket() -> None:
    a, b = Replica.memory("a"), Replica.memory("b")
    a.tasks.create("seen by the plain client", id="t-seen")
    node_a = mesh(a)
    async with running(node_a):
        node_b = mesh(b, listen=None, peers=[node_a.url])
        async with running(node_b):
            client = await raw_client(node_a.url)
            first = await receive_message(client, SyncStep1)
            assert first.state_vector != b"\x00", "the server's step 1 comes on open"
            awareness = await receive_message(client, Awareness)
            states = [entry.state for entry in decode_awareness_update(awareness.payload)]
            base = {"replica_id": "a", "room": "agentstate", "kind": "agentstate"}
            assert any(state.items() >= base.items() and set(state) <= {*base, "links"} for state in states)
            doc = Doc()
            await client.send(encode(SyncStep1(doc.get_state())))
            step2 = await receive_message(client, SyncStep2)
            doc.apply_update(step2.update)
            assert "t-seen" in doc.get("tasks", type=Map)
            before = doc.get_state()
            doc.get("notes", type=Map)["from-yjs"] = "hello"
            await client.send(encode(SyncUpdate(doc.get_update(before))))
            await eventually(lambda: "from-yjs" in snapshot(b).get("notes", type=Map), what="relay to b")
            await client.send(encode(Awareness(encode_awareness_update([AwarenessEntry(77, 1, {"user": "zoë"})]))))
            await eventually(lambda: any(s["state"] == {"user": "zoë"} for s in node_b.online()),
                             what="client awareness relayed to b")
            a.tasks.create("pushed to the client", id="t-pushed")
            while "t-pushed" not in doc.get("tasks", type=Map):
                pushed = await receive_message(client, SyncUpdate)
                doc.apply_update(pushed.update)
            await client.close()
            await eventually(lambda: not any(s["state"] == {"user": "zoë"} for s in node_b.online()),
                             what="client awareness removed when it leaves")
            await wait_converged(a, b)


async def test_graceful_shutdown_closes_with_1001_and_flushes(tmp_path: Path) -> None:
    a = Replica.open(tmp_path / "a", durability="lazy")
    b = Replica.memory("b")
    try:
        node_a = mesh(a)
        await node_a.start()
        node_b = mesh(b, listen=None, peers=[node_a.url])
        async with running(node_b):
            client = await raw_client(node_a.url)
            await receive_message(client, SyncStep1)
            a.tasks.create("last write before shutdown")
            await wait_converged(a, b)
            await node_a.stop()
            assert await close_code_of(client) == closecodes.GOING_AWAY
            await eventually(lambda: node_b.status()["peers"][0]["last_close_code"] == closecodes.GOING_AWAY,
                             what="peer saw 1001")
            assert a.durable_lsn == a.last_lsn
            assert not any(s["state"] and s["state"].get("replica_id") == "a" for s in node_b.online())
    finally:
        a.close()


async def test_awareness_presence_reaches_peers_and_is_renewed() -> None:
    a, b = Replica.memory("a"), Replica.memory("b")
    node_a = mesh(a, awareness_interval=0.05, presence={"agent": "planner"})
    async with running(node_a):
        node_b = mesh(b, listen=None, peers=[node_a.url])
        async with running(node_b):
            await eventually(lambda: any(s["state"].get("agent") == "planner" for s in node_b.online()),
                             what="presence at b")
            node_a.set_presence({"working_on": "T-1"})
            await eventually(lambda: any(s["state"].get("working_on") == "T-1" for s in node_b.online()),
                             what="presence update at b")
            client = await raw_client(node_a.url)
            renewals = 0
            while renewals < 3:
                message = await receive_message(client, Awareness, timeout=2)
                renewals += any(e.client_id == a.client_id for e in decode_awareness_update(message.payload))
            await client.close()


async def test_writes_from_other_threads_are_relayed() -> None:
    a, b = Replica.memory("a"), Replica.memory("b")
    node_a = mesh(a)
    async with running(node_a):
        node_b = mesh(b, listen=None, peers=[node_a.url])
        async with running(node_b):

            def write_many(prefix: str) -> None:
                for index in range(100):
                    a.tasks.create(f"{prefix} {index}")

            await asyncio.gather(*(asyncio.to_thread(write_many, f"thread {n}") for n in range(4)))
            await wait_converged(a, b)
            assert len(b.tasks) == 400
