"""Helpers shared by the mesh tests: start meshes on loopback, wait for states, raw clients."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from pycrdt import Doc, Map
from websockets.asyncio.client import ClientConnection, connect

from replica.replica import Replica
from replica.statevector import decode_state_vector
from transport.limits import ReconnectPolicy
from transport.mesh import Mesh
from transport.messages import Message, SyncStep1, decode, encode
from transport.updates import document_digest

M = TypeVar("M")

FAST_RECONNECT = ReconnectPolicy(initial=0.05, factor=2.0, maximum=0.4, jitter=0.5)
"""Reconnect quickly in tests (the default starts at 0.5 s)."""

LOOPBACK = ("127.0.0.1", 0)


async def eventually(predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `predicate` until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (for nodes that must know each other's URL)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback TCP ports that were free a moment ago: probed while all are bound,
    since probing one at a time may hand out the same port twice."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def node_url(port: int, room: str = "agentstate") -> str:
    """The ws:// URL of a node listening on loopback `port`."""
    return f"ws://127.0.0.1:{port}/{room}"


def fingerprint(replica: Replica) -> tuple[tuple[tuple[int, int], ...], bytes]:
    """State vector (sorted) and digest: equal iff the replicas hold the same document."""
    return tuple(sorted(decode_state_vector(replica.state_vector()).items())), document_digest(replica)


def converged(*replicas: Replica) -> bool:
    """True when every replica holds the same structs and deletions, and the same tasks.

    The tasks are compared too: two structs with one id (a forged or reused client id)
    would pass the first test with different contents.
    """
    first = fingerprint(replicas[0])
    tasks = snapshot(replicas[0]).get("tasks", type=Map).to_py()
    return all(
        fingerprint(replica) == first and snapshot(replica).get("tasks", type=Map).to_py() == tasks
        for replica in replicas[1:]
    )


def snapshot(replica: Replica) -> Doc:
    """A private copy of a replica's document, taken through its (locked) sync surface.

    Reading `replica.doc` directly from the test would race the mesh's worker threads.
    """
    doc: Doc = Doc()
    doc.apply_update(replica.diff())
    return doc


async def wait_converged(*replicas: Replica, timeout: float = 10.0) -> None:
    """Wait until all `replicas` hold the same document."""
    await eventually(lambda: converged(*replicas), timeout=timeout, what="replicas to converge")


def mesh(replica: Replica, **options: Any) -> Mesh:
    """A Mesh with test defaults: listen on loopback port 0, reconnect fast."""
    options.setdefault("listen", LOOPBACK)
    options.setdefault("reconnect", FAST_RECONNECT)
    return Mesh(replica, **options)


@asynccontextmanager
async def running(*meshes: Mesh) -> AsyncIterator[tuple[Mesh, ...]]:
    """Start the meshes in order, stop them in reverse order."""
    started: list[Mesh] = []
    try:
        for item in meshes:
            await item.start()
            started.append(item)
        yield meshes
    finally:
        for item in reversed(started):
            await item.stop()


def peer_replica_ids(node: Mesh) -> list[str | None]:
    """Replica ids of a mesh's live connections."""
    return [conn.peer_replica_id for conn in node.connections()]


async def raw_client(url: str | None, **kwargs: Any) -> ClientConnection:
    """A plain websocket client (no hello), as a Yjs client would open."""
    assert url is not None, "the mesh is not listening"
    kwargs.setdefault("compression", None)
    kwargs.setdefault("ping_interval", None)
    kwargs.setdefault("proxy", None)
    return await connect(url, **kwargs)


async def receive_message(ws: ClientConnection, kind: type[M], *, timeout: float = 5.0) -> M:
    """Receive frames until one decodes to `kind`; return it."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {kind.__name__} within {timeout}s")
        frame = await asyncio.wait_for(ws.recv(), remaining)
        assert isinstance(frame, bytes), "servers send binary frames only"
        message: Message = decode(frame)
        if isinstance(message, kind):
            return message


async def close_code_of(ws: ClientConnection, *, timeout: float = 5.0) -> int | None:
    """Read until the server closes; return the close code it sent."""
    try:
        async with asyncio.timeout(timeout):
            async for _ in ws:
                pass
    except Exception:
        pass
    await asyncio.wait_for(ws.wait_closed(), timeout)
    received = ws.protocol.close_rcvd
    return received.code if received is not None else None


def step1_frame(state_vector: bytes = b"\x00") -> bytes:
    """A sync step 1 frame."""
    return encode(SyncStep1(state_vector))
