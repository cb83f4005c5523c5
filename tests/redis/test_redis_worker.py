"""RedisWorker against a real redis-server: compaction, trimming, jobs retired and queued again."""

from __future__ import annotations

import time
from pathlib import Path

from redis.asyncio import Redis

from replica.replica import Replica
from transport.redis_store import RedisRoomStore, RoomKeys, jobs_key
from transport.redis_worker import RETIRED, RedisWorker, room_path

from .redisserver import RedisServer
from .roomkit import Writer, hits


async def run_until_retired(worker: RedisWorker, rooms: set[str], timeout: float = 60.0) -> None:
    """Run the worker's loop step until every room's job has been retired (bounded)."""
    left = set(rooms)
    deadline = time.monotonic() + timeout
    while left:
        assert time.monotonic() < deadline, f"jobs of {sorted(left)} not retired within {timeout:g} s"
        for result in await worker.run_once(block=True):
            if result.outcome == RETIRED:
                left.discard(result.room)


async def test_worker_compacts_trims_and_retires(redis_server: RedisServer, tmp_path: Path) -> None:
    """Snapshot + durable copy hold every write, streams end empty, and new writes queue a new job."""
    data = tmp_path / "worker"
    async with RedisRoomStore(redis_server.url) as store, \
            RedisWorker(redis_server.url, data, lease=0.3, min_age=0) as worker:
        await worker.ensure_group()
        room_a, room_b = await store.open("proj/a"), await store.open("..")
        writer_a, writer_b = Writer("wa"), Writer("wb")
        for _ in range(40):
            await writer_a.incr(room_a)
        for _ in range(10):
            await writer_b.incr(room_b)
        await run_until_retired(worker, {"proj/a", ".."})
        raw = Redis.from_url(redis_server.url)
        try:
            for name in ("proj/a", ".."):
                keys = RoomKeys.of("agentstate", name)
                assert await raw.xlen(keys.updates) == 0
                assert await raw.exists(keys.job) == 0
                assert await raw.hexists(keys.snapshot, "state")
            assert await raw.xlen(jobs_key("agentstate")) == 0
        finally:
            await raw.aclose()
        assert worker.counters["snapshots"] >= 2 and worker.counters["trimmed"] >= 50
        for name, total in (("proj/a", 40), ("..", 10)):
            durable = Replica.open(room_path(data, name))
            try:
                assert hits(durable) == total
            finally:
                durable.close()
        assert sorted(p.name for p in (data / "rooms").iterdir()) == ["%2E%2E", "proj%2Fa"]
        for _ in range(5):
            await writer_a.incr(room_a)
        await run_until_retired(worker, {"proj/a"})
    async with RedisRoomStore(redis_server.url) as fresh:
        assert hits((await fresh.open("proj/a")).replica) == 45
        assert hits((await fresh.open("..")).replica) == 10


async def test_bad_job_is_dropped_and_counted(redis_server: RedisServer, tmp_path: Path) -> None:
    """A job naming no valid room is acknowledged, deleted and counted; the worker goes on."""
    async with RedisWorker(redis_server.url, tmp_path, lease=0.3) as worker:
        await worker.ensure_group()
        await worker.redis.xadd(jobs_key("agentstate"), {"room": b"\xff\xfe"})
        await worker.redis.xadd(jobs_key("agentstate"), {"other": b"x"})
        deadline = time.monotonic() + 30
        while worker.rejections().get("bad_job", 0) < 2:
            assert time.monotonic() < deadline, "bad jobs not rejected"
            await worker.run_once(block=True)
        assert await worker.redis.xlen(jobs_key("agentstate")) == 0
