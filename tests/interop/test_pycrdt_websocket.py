"""Interop with pycrdt.websocket (software no one here wrote): its Provider on our server, our mesh on its server."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from pycrdt import Doc, Map, Provider

from replica import Replica
from transport.mesh import Mesh

from tests.interop.ywskit import pycrdt_server, wait_for, websockets_provider
from tests.transport.meshkit import FAST_RECONNECT

TOKEN = "interop-token"
ROOM = "board"
HAS_HTTPX_WS = importlib.util.find_spec("httpx_ws") is not None


def schema_task(title: str, owner: str) -> Map:
    """A task exactly as docs/schema.md lays it out, built with plain pycrdt types."""
    now = "2026-11-24T09:30:00.000000+00:00"
    return Map({
        "title": title, "description": "", "status": "pending", "priority": "low", "owner": owner,
        "created_at": now, "updated_at": now, "created_by": "pycrdt-provider",
        "tags": Map({"interop": True}), "depends_on": Map(), "properties": Map({"n": 1}),
    })


def doc_task_titles(doc: Doc) -> dict[str, str]:
    """Task id -> title as a plain pycrdt Doc sees them."""
    return {key: value["title"] for key, value in doc.get("tasks", type=Map).to_py().items()}


@asynccontextmanager
async def httpx_provider(doc: Doc, url: str, room: str, token: str) -> AsyncIterator[Provider]:
    """pycrdt's Provider over pycrdt.websocket's own `HttpxWebsocket` adapter (an httpx-ws client)."""
    from httpx_ws import aconnect_ws
    from pycrdt.websocket.websocket import HttpxWebsocket

    http_url = url.replace("ws://", "http://", 1)
    async with aconnect_ws(http_url, headers={"Authorization": f"Bearer {token}"},
                           keepalive_ping_interval_seconds=None) as ws:
        async with Provider(doc, HttpxWebsocket(ws, room)) as provider:
            yield provider


def plain_websockets_provider(doc: Doc, url: str, room: str, token: str) -> AbstractAsyncContextManager[Provider]:
    """pycrdt's Provider over a `websockets` client (token in the query string, as browsers send it)."""
    return websockets_provider(doc, f"{url}?token={token}", room)


CLIENTS: dict[str, Callable[[Doc, str, str, str], AbstractAsyncContextManager[Any]]] = {
    "httpx-ws": httpx_provider,
    "websockets": plain_websockets_provider,
}


@pytest.mark.parametrize("client", sorted(CLIENTS))
async def test_pycrdt_provider_syncs_with_our_server(client: str) -> None:
    if client == "httpx-ws" and not HAS_HTTPX_WS:
        pytest.skip("httpx-ws is not installed (pycrdt.websocket's own client adapter needs it)")
    replica = Replica.memory("py-server")
    replica.tasks.create("written before the client came", id="T-py-1")
    node = Mesh(replica, room=ROOM, listen=("127.0.0.1", 0), tokens=[TOKEN], reconnect=FAST_RECONNECT)
    async with node:
        assert node.url is not None
        doc = Doc()
        async with CLIENTS[client](doc, node.url, ROOM, TOKEN) as provider:
            await wait_for(provider.synced.is_set, what="the provider's sync")
            await wait_for(lambda: "T-py-1" in doc_task_titles(doc), what="T-py-1 in the client doc")
            assert doc_task_titles(doc)["T-py-1"] == "written before the client came"

            # client -> server: a schema-conformant task and a counter slot the typed API accepts
            with doc.transaction():
                doc.get("tasks", type=Map)["T-pyws-1"] = schema_task("from pycrdt's Provider", "provider")
                doc.get("counters", type=Map)[f"builds|{doc.client_id}"] = {"p": 3, "n": 0}
            await wait_for(lambda: replica.tasks.find("T-pyws-1") is not None, what="T-pyws-1 on the server")
            task = replica.tasks.get("T-pyws-1")
            assert (task.title, task.owner, task.tags, task.properties) == (
                "from pycrdt's Provider", "provider", ("interop",), {"n": 1})
            assert replica.counters.value("builds") == 3
            assert replica.invalid_records() == []

            # server -> client, after sync: a live update
            replica.tasks.update("T-pyws-1", status="completed")
            replica.tasks.create("written after the client joined", id="T-py-2")
            await wait_for(lambda: "T-py-2" in doc_task_titles(doc), what="T-py-2 in the client doc")
            await wait_for(lambda: doc.get("tasks", type=Map)["T-pyws-1"]["status"] == "completed",
                           what="the status change in the client doc")

            peers = node.status()["peers"]
            assert len(peers) == 1 and peers[0]["agentstate"] is False and peers[0]["synced"] is True
    assert node.status()["rejections"] == {}


async def test_our_mesh_syncs_through_pycrdt_websocket_server() -> None:
    replica = Replica.memory("py-dialer")
    replica.tasks.create("written before dialing", id="T-mesh-1")
    async with pycrdt_server(f"/{ROOM}") as (websocket_server, port):
        url = f"ws://127.0.0.1:{port}/{ROOM}"
        node = Mesh(replica, room=ROOM, peers=[url], reconnect=FAST_RECONNECT)
        doc = Doc()
        async with node, websockets_provider(doc, url, f"/{ROOM}") as provider:
            await wait_for(provider.synced.is_set, what="the provider's sync")
            room = await websocket_server.get_room(f"/{ROOM}")

            # our mesh -> their room -> their Provider
            await wait_for(lambda: "T-mesh-1" in doc_task_titles(doc), what="T-mesh-1 at the provider")
            replica.tasks.create("written while connected", id="T-mesh-2")
            await wait_for(lambda: "T-mesh-2" in doc_task_titles(doc), what="T-mesh-2 at the provider")

            # their Provider -> their room -> our mesh
            with doc.transaction():
                doc.get("tasks", type=Map)["T-prov-1"] = schema_task("from the other side", "provider")
            await wait_for(lambda: replica.tasks.find("T-prov-1") is not None, what="T-prov-1 in our replica")
            assert replica.tasks.get("T-prov-1").title == "from the other side"

            # all three hold the same document
            expected = {"T-mesh-1", "T-mesh-2", "T-prov-1"}
            assert set(doc_task_titles(room.ydoc)) == expected
            assert {task.id for task in replica.tasks.list()} == expected
            peer = node.status()["peers"][0]
            assert peer["connected"] and peer["agentstate"] is False and peer["synced"] is True
        assert node.status()["rejections"] == {}
