"""Where a hub's rooms live: the `RoomStore` seam, room names, and the local store (a directory per room).

A hub asks its store to open a room on the first connection and closes it after the room
has been idle; the store decides where the room's state is kept (a replica directory here,
a Redis Stream in `transport.redis_store`). Every store answers the same conformance suite
(tests/hub/test_room_stores.py).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote

from replica.durability import Durability
from replica.errors import DataDirLockedError
from replica.replica import Replica
from transport.messages import MAX_ROOM_SIZE

ROOMS_DIR = "rooms"
"""Subdirectory of a hub's data directory that holds one replica directory per room."""

HUB_LOCK = "hub.lock"
"""File in a hub's data directory whose exclusive flock names the one hub serving it."""


class InvalidRoomError(ValueError):
    """A request path that does not name a valid room."""


def room_from_path(path: str) -> str:
    """The room a websocket request path names (URL-decoded, as y-websocket sends it); or raise."""
    raw = path.partition("?")[0]
    name = unquote(raw[1:] if raw.startswith("/") else raw)
    check_room_name(name)
    return name


def check_room_name(name: str) -> None:
    """Raise InvalidRoomError unless `name` is 1..MAX_ROOM_SIZE bytes of printable text."""
    if not name:
        raise InvalidRoomError("the URL path must name a room, e.g. ws://host:port/my-board")
    if not name.isprintable():
        raise InvalidRoomError("a room name must be printable text")
    if len(name.encode("utf-8")) > MAX_ROOM_SIZE:
        raise InvalidRoomError(f"a room name is at most {MAX_ROOM_SIZE} bytes")


def room_directory_name(name: str) -> str:
    """A file name for a room: percent-encoded so that it is injective, safe and never '.' or '..'."""
    return quote(name, safe="-_").replace(".", "%2E")


class OpenRoom(Protocol):
    """A loaded room: the replica its Mesh serves, and the hook that stores a client's update first."""

    replica: Replica
    before_apply: Callable[[bytes], Awaitable[None]] | None

    async def close(self) -> None:
        """Flush and release the room's state."""


class RoomStore(Protocol):
    """Opens rooms for a hub (see module docstring)."""

    async def open(self, name: str) -> OpenRoom:
        """Load room `name`, creating it if new."""

    async def close(self) -> None:
        """Release what the store itself holds (connections, background tasks)."""


class LocalRoom:
    """A room kept in its own replica directory; the replica's durable log makes writes stick."""

    before_apply: Callable[[bytes], Awaitable[None]] | None = None

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    async def close(self) -> None:
        """Close the replica (snapshot if its log grew long, flush, release the directory)."""
        await asyncio.to_thread(self.replica.close)


class LocalRoomStore:
    """Rooms as replica directories under DIR/rooms/, created on first use; one hub per DIR (hub.lock)."""

    def __init__(self, data: Path | str, *, durability: Durability | str = Durability.BALANCED) -> None:
        self.root = Path(data) / ROOMS_DIR
        self.durability = Durability.parse(durability)
        self._lock_fd: int | None = None
        Path(data).mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(Path(data) / HUB_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise DataDirLockedError(Path(data), {"pid": holder or "?", "role": "hub"}) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._lock_fd = fd

    def path_of(self, name: str) -> Path:
        """The directory of room `name`."""
        return self.root / room_directory_name(name)

    async def open(self, name: str) -> LocalRoom:
        """Open (creating) the room's replica in a worker thread: recovery reads files."""
        check_room_name(name)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        replica = await asyncio.to_thread(Replica.open, self.path_of(name), durability=self.durability)
        return LocalRoom(replica)

    async def close(self) -> None:
        """Release the hub lock (rooms are closed by the hub first)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def known_rooms(self) -> list[str]:
        """Names of the rooms that have a directory (loaded or not)."""
        if not self.root.is_dir():
            return []
        return sorted(unquote(entry) for entry in os.listdir(self.root) if not entry.startswith("."))
