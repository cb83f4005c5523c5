"""Fuzz a live server with at least 10,000 random and mutated frames over several connections.

The fuzzer (tests/transport/fuzzclient.py) runs in its own process. The server must stay
up, keep its replica unchanged and keep serving its other peer. Mutations that happen to
form a valid Yjs update which would change the document are left out: from an authorised
peer that is a legitimate write, not bad input (checked against a scratch copy of the
server's document before sending).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import msgpack

from replica.replica import Replica
from transport.limits import Limits
from transport.messages import SyncStep1

from tests.transport.fuzzclient import FRAME_LIMIT, WORKERS
from tests.transport.meshkit import eventually, fingerprint, mesh, raw_client, receive_message, running, wait_converged

FRAMES = int(os.environ.get("AGENTSTATE_MESH_FUZZ_FRAMES", "10000"))
SEED = int(os.environ.get("AGENTSTATE_MESH_FUZZ_SEED", "20240611"))
TIME_BUDGET = 150.0
REPOSITORY = Path(__file__).resolve().parents[2]


async def test_fuzzed_frames_leave_the_server_up_unchanged_and_its_peer_unaffected(tmp_path: Path) -> None:
    server = Replica.memory("fuzz-target")
    updates: list[bytes] = []
    unsubscribe = server.on_update(lambda update, origin: updates.append(update))
    for index in range(5):
        task = server.tasks.create(f"task {index}", tags=["seed"])
        server.tasks.update(task.id, status="in_progress")
    unsubscribe()
    peer = Replica.memory("steady-peer-3f0b9c2e41d7")
    node = mesh(server, limits=Limits(max_frame_size=FRAME_LIMIT))
    async with running(node):
        node_peer = mesh(peer, listen=None, peers=[node.url])
        async with running(node_peer):
            await wait_converged(server, peer)
            steady = node.connections()[0]
            before = fingerprint(server)
            corpus = tmp_path / "corpus.msgpack"
            corpus.write_bytes(msgpack.packb({"state": server.diff(), "updates": updates}))

            def received() -> int:
                return int(node.status()["totals"]["messages_in"]) - steady.counters["messages_in"]

            fuzzer = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.transport.fuzzclient", str(node.url), str(corpus), str(SEED),
                cwd=REPOSITORY, stderr=asyncio.subprocess.PIPE,
            )
            started = time.monotonic()
            try:
                await eventually(lambda: received() >= FRAMES or fuzzer.returncode is not None,
                                 timeout=TIME_BUDGET, what=f"{FRAMES} fuzz frames")
            finally:
                if fuzzer.returncode is None:
                    fuzzer.terminate()
                _, errors = await fuzzer.communicate()
            elapsed = time.monotonic() - started
            assert received() >= FRAMES, errors.decode(errors="replace")[-2000:]
            assert fingerprint(server) == before, "fuzzing changed the server's document"
            assert steady in node.connections() and not steady.closing, "the steady peer was disconnected"
            rejections = node.status()["rejections"]
            assert rejections.get("protocol_error", 0) > 0 and rejections.get("frame_too_big", 0) > 0
            client = await raw_client(node.url)
            await receive_message(client, SyncStep1)
            await client.close()
            server.tasks.create("after the fuzz", id="t-after")
            peer.tasks.create("peer writes too", id="t-peer")
            await eventually(lambda: "t-after" in peer.tasks and "t-peer" in server.tasks, what="peer still synced")
            await wait_converged(server, peer)
            connections = sum(rejections.values())
            assert connections >= WORKERS
            print(f"fuzz: {received()} frames received, about {connections} connections refused, in {elapsed:.1f}s")
