"""Helpers for the Redis tests: clients that make real Yjs updates, and bounded waiting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from replica.replica import Replica
from transport.redis_store import RedisRoom

DEADLINE = 60.0


class Writer:
    """A client replica whose every write is handed to a room as a hub would: XADD, then apply."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.replica = Replica.memory()
        self.pending: list[bytes] = [self.replica.diff()]
        """Updates not yet sent: first the state the replica was created with (its schema version)."""
        self.replica.on_update(lambda update, origin: self.pending.append(update) if origin is None else None)
        self.writes = 0

    async def send(self, room: RedisRoom) -> None:
        """Persist then apply every update made since the last send (the hub's order); what Redis
        did not take stays pending, as a client keeps what was not acknowledged."""
        while self.pending:
            await room.before_apply(self.pending[0], origin=self.name)
            room.replica.apply_update(self.pending.pop(0), origin=self.name)

    async def incr(self, room: RedisRoom, counter: str = "hits") -> None:
        """One counted write through `room`."""
        self.replica.counters.incr(counter)
        self.writes += 1
        await self.send(room)


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll `predicate` every 20 ms until true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


def hits(replica: Replica, counter: str = "hits") -> int:
    """The counter's total as this replica sees it."""
    return replica.counters.value(counter)
