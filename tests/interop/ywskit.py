"""Adapters between the `websockets` library and pycrdt's `Channel`, for interop tests and benchmarks.

pycrdt's `Provider` and `pycrdt.websocket.WebsocketServer` speak through a `Channel`
(an async iterator of binary messages with `send`, `recv` and `path`). pycrdt.websocket
ships `HttpxWebsocket` (for `httpx-ws` clients) and an ASGI adapter; websockets 14+
connections have no `path` attribute, so the two small classes below fill that gap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed


class WebsocketsChannel:
    """A pycrdt `Channel` over a `websockets` asyncio connection (client or server side)."""

    def __init__(self, ws: ClientConnection | ServerConnection, path: str) -> None:
        self._ws = ws
        self._path = path

    @property
    def path(self) -> str:
        """The room path, as pycrdt.websocket names rooms."""
        return self._path

    def __aiter__(self) -> WebsocketsChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def send(self, message: bytes) -> None:
        """Send one binary frame (a closed socket drops it silently, as pycrdt expects of a channel)."""
        try:
            await self._ws.send(message)
        except ConnectionClosed:
            pass

    async def recv(self) -> bytes:
        """Receive one frame as bytes."""
        message = await self._ws.recv()
        return message if isinstance(message, bytes) else message.encode()


@asynccontextmanager
async def pycrdt_server(*rooms: str, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[tuple[Any, int]]:
    """A running `pycrdt.websocket.WebsocketServer` behind `websockets` (compression off); yields (server, port).

    `rooms` (paths such as "/board") are created up front: pycrdt.websocket 0.16 fails one of
    two connections that race to create the same room ("YRoom already running").
    """
    from pycrdt.websocket import WebsocketServer

    async with WebsocketServer(auto_clean_rooms=False) as websocket_server:
        for room in rooms:
            await websocket_server.get_room(room)

        async def handler(ws: ServerConnection) -> None:
            assert ws.request is not None
            await websocket_server.serve(WebsocketsChannel(ws, ws.request.path))

        server: Server = await serve(handler, host, port, compression=None, max_size=None, ping_interval=None)
        try:
            yield websocket_server, int(server.sockets[0].getsockname()[1])
        finally:
            server.close()
            await server.wait_closed()


@asynccontextmanager
async def websockets_provider(doc: Any, url: str, room: str, **connect_kwargs: Any) -> AsyncIterator[Any]:
    """A pycrdt `Provider` syncing `doc` with the room at `url` over a `websockets` client connection."""
    from pycrdt import Provider

    connect_kwargs.setdefault("compression", None)
    connect_kwargs.setdefault("max_size", None)
    connect_kwargs.setdefault("ping_interval", None)
    async with connect(url, **connect_kwargs) as ws:
        async with Provider(doc, WebsocketsChannel(ws, room)) as provider:
            yield provider


async def wait_for(predicate: Any, *, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `predicate()` every 5 ms until it holds; fail with `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)
