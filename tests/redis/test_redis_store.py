"""RedisRoomStore against a real redis-server: round trip, fan-out between hubs, bad entries, restarts."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from transport.redis_store import RedisRoomStore, RoomKeys, StoreUnavailableError

from .redisserver import RedisServer
from .roomkit import Writer, hits, wait_for


async def test_append_then_open_round_trip(redis_server: RedisServer) -> None:
    """What one store appended, a fresh store opens from the stream alone."""
    async with RedisRoomStore(redis_server.url) as first:
        room = await first.open("board")
        writer = Writer("w1")
        for _ in range(25):
            await writer.incr(room)
        writer.replica.tasks.create("Write the docs", id="T-1")
        await writer.send(room)
        assert hits(room.replica) == 25
    async with RedisRoomStore(redis_server.url) as second:
        again = await second.open("board")
        assert hits(again.replica) == 25
        assert again.replica.tasks.get("T-1").title == "Write the docs"
        other = await second.open("other-room")
        assert hits(other.replica) == 0
        with pytest.raises(ValueError):
            await second.open("board")
        with pytest.raises(ValueError):
            await second.open("")


async def test_two_hubs_see_each_others_updates(redis_server: RedisServer) -> None:
    """Two stores ("hubs") on one room: each one's writes reach the other's replica via the fan-out."""
    async with RedisRoomStore(redis_server.url, hub_id="hub-a") as hub_a, \
            RedisRoomStore(redis_server.url, hub_id="hub-b") as hub_b:
        room_a = await hub_a.open("shared")
        room_b = await hub_b.open("shared")
        seen_b: list[str | None] = []
        room_b.replica.on_update(lambda update, origin: seen_b.append(origin))
        alice, bob = Writer("alice"), Writer("bob")
        for _ in range(30):
            await alice.incr(room_a)
            await bob.incr(room_b)
        await wait_for(lambda: hits(room_a.replica) == 60 and hits(room_b.replica) == 60, "both hubs at 60")
        assert "redis" in seen_b
        assert hub_a.counters["own_skipped"] == 31  # its 30 writes and the writer's initial state
        late = await hub_b.open("late-room")
        await Writer("carol").incr(await hub_a.open("late-room"))
        await wait_for(lambda: hits(late.replica) == 1, "a room opened later to be followed too")


async def test_malformed_entries_are_counted_not_fatal(redis_server: RedisServer) -> None:
    """Garbage in a room's stream is skipped with a counted rejection; later entries still apply."""
    async with RedisRoomStore(redis_server.url, hub_id="hub-a") as hub_a, \
            RedisRoomStore(redis_server.url, hub_id="hub-b") as hub_b:
        room_a = await hub_a.open("r")
        room_b = await hub_b.open("r")
        raw = Redis.from_url(redis_server.url)
        try:
            stream = RoomKeys.of("agentstate", "r").updates
            await raw.xadd(stream, {"u": b"\x01\xff\xff\xff\xff\xff\xff", "o": "intruder"})
            await raw.xadd(stream, {"x": b"no update field", "o": "intruder"})
        finally:
            await raw.aclose()
        writer = Writer("w")
        await writer.incr(room_a)
        await wait_for(lambda: hits(room_b.replica) == 1, "the good entry after the bad ones")
        assert hub_b.rejections() == {"malformed_update": 1, "missing_update": 1}
        async with RedisRoomStore(redis_server.url) as fresh:
            opened = await fresh.open("r")
            assert hits(opened.replica) == 1
            assert fresh.rejections() == {"malformed_update": 1, "missing_update": 1}


async def test_redis_restart_loses_nothing_acknowledged(redis_server: RedisServer) -> None:
    """Kill -9 Redis (appendonly, fsync always): writes fail clearly meanwhile; after restart the
    stores reconnect by themselves and every acknowledged write is there."""
    async with RedisRoomStore(redis_server.url, hub_id="hub-a", write_timeout=1.0) as hub_a, \
            RedisRoomStore(redis_server.url, hub_id="hub-b", write_timeout=1.0) as hub_b:
        room_a = await hub_a.open("r")
        room_b = await hub_b.open("r")
        alice, bob = Writer("alice"), Writer("bob")
        for _ in range(20):
            await alice.incr(room_a)
        await asyncio.to_thread(redis_server.kill)
        alice.replica.counters.incr("hits")
        with pytest.raises(StoreUnavailableError):
            await alice.send(room_a)
        assert hits(room_a.replica) == 20
        assert not hub_a.connected
        await asyncio.to_thread(redis_server.start)
        await alice.send(room_a)
        for _ in range(20):
            await bob.incr(room_b)
        await wait_for(lambda: hits(room_a.replica) == 41 and hits(room_b.replica) == 41, "both hubs at 41")
        await wait_for(lambda: hub_b.connected and hub_a.connected, "both stores connected again")
    async with RedisRoomStore(redis_server.url) as fresh:
        assert hits((await fresh.open("r")).replica) == 41
