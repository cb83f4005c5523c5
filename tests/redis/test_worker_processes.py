"""`agentstate worker` as real processes: racing writes and a second worker; killed mid-job and taken over."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from pycrdt import Doc, Map
from redis.asyncio import Redis

from replica.replica import Replica
from transport.redis_store import RedisRoomStore, RoomKeys, jobs_key, workers_group
from transport.redis_worker import room_path

from .redisserver import RedisServer
from .roomkit import Writer, hits, wait_for

AGENTSTATE = str(Path(sys.executable).parent / "agentstate")


class WorkerProcess:
    """One `agentstate worker` process whose stderr lines are collected by a thread."""

    def __init__(self, url: str, data: Path, consumer: str, *, lease: float, min_age: float) -> None:
        self.consumer = consumer
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [AGENTSTATE, "worker", "--redis", url, "--data", str(data), "--consumer", consumer,
             "--lease", str(lease), "--min-age", str(min_age)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def saw(self, text: str) -> bool:
        """True once a stderr line contains `text`."""
        return any(text in line for line in list(self.lines))

    def stop(self) -> int:
        """SIGTERM and wait (bounded); the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.consumer} did not stop on SIGTERM: " + "\n".join(self.lines[-20:])) from None
        finally:
            self._reader.join(timeout=5)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self._reader.join(timeout=5)


async def all_retired(raw: Redis, rooms: list[str]) -> bool:
    """True when every room's stream is empty and no room has a job."""
    for name in rooms:
        keys = RoomKeys.of("agentstate", name)
        if await raw.xlen(keys.updates) or await raw.exists(keys.job):
            return False
    return await raw.xlen(jobs_key("agentstate")) == 0


async def wait_retired(raw: Redis, rooms: list[str], timeout: float = 120.0) -> None:
    """Poll until `all_retired` (bounded)."""
    deadline = time.monotonic() + timeout
    while not await all_retired(raw, rooms):
        assert time.monotonic() < deadline, f"streams of {rooms} not compacted and trimmed within {timeout:g} s"
        await asyncio.sleep(0.1)


async def test_compaction_races_writes_and_a_second_worker(redis_server: RedisServer, tmp_path: Path) -> None:
    """Two worker processes on one directory compact three rooms while two hubs write to them:
    nothing is lost (snapshots and durable copies hold every write), and the streams end trimmed."""
    data = tmp_path / "durable"
    rooms = ["r0", "r1", "r2"]
    workers = [WorkerProcess(redis_server.url, data, f"w{i}", lease=0.4, min_age=0.3) for i in range(2)]
    raw = Redis.from_url(redis_server.url)
    try:
        async with RedisRoomStore(redis_server.url, hub_id="hub-1") as hub_1, \
                RedisRoomStore(redis_server.url, hub_id="hub-2") as hub_2:
            opened = {(hub, name): await hub.open(name) for hub in (hub_1, hub_2) for name in rooms}
            writers = [(Writer(f"{hub.hub_id}-{name}"), opened[hub, name]) for hub in (hub_1, hub_2) for name in rooms]

            async def write(writer: Writer, room: object) -> None:
                for _ in range(60):
                    await writer.incr(room)  # type: ignore[arg-type]
                    await asyncio.sleep(0.005)

            await asyncio.gather(*(write(writer, room) for writer, room in writers))
            for name in rooms:
                await wait_for(lambda name=name: hits(opened[hub_1, name].replica) == 120
                               and hits(opened[hub_2, name].replica) == 120, f"both hubs at 120 in {name}")
            await wait_retired(raw, rooms)
        started = [sum("event=job_started" in line for line in w.lines) for w in workers]
        assert sum(started) >= len(rooms), started
        for worker in workers:
            assert worker.stop() == 0
            assert not worker.saw("Traceback"), "\n".join(worker.lines)
        async with RedisRoomStore(redis_server.url) as fresh:
            for name in rooms:
                assert hits((await fresh.open(name)).replica) == 120
                durable = Replica.open(room_path(data, name))
                try:
                    assert hits(durable) == 120
                finally:
                    durable.close()
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.kill()
        await raw.aclose()


async def test_worker_killed_mid_job_is_taken_over(redis_server: RedisServer, tmp_path: Path) -> None:
    """kill -9 a worker while it compacts a 20,000-entry stream: after its lease another worker
    takes the job from its pending list and finishes it; nothing is lost."""
    data = tmp_path / "durable"
    doc = Doc()
    bulk = doc.get("bulk", type=Map)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(20_000):
        bulk[f"k{i}"] = i
    raw = Redis.from_url(redis_server.url)
    first = second = None
    try:
        async with RedisRoomStore(redis_server.url, hub_id="hub-1") as hub:
            room = await hub.open("big")
            await room.before_apply(updates[0])
            stream = RoomKeys.of("agentstate", "big").updates
            pipe = raw.pipeline(transaction=False)
            for update in updates[1:]:
                pipe.xadd(stream, {"u": update, "o": "hub-1", "c": "bulk"})
            await pipe.execute()
        first = WorkerProcess(redis_server.url, data, "worker-a", lease=2.0, min_age=0)
        await wait_for(lambda: first.saw("event=job_started room=big"), "worker-a to start the job")
        first.kill()
        pending = await raw.xpending_range(jobs_key("agentstate"), workers_group("agentstate"), "-", "+", 10)
        assert [entry["consumer"] for entry in pending] == [b"worker-a"]
        assert not await raw.hexists(RoomKeys.of("agentstate", "big").snapshot, "id"), "worker-a finished first"
        second = WorkerProcess(redis_server.url, data, "worker-b", lease=2.0, min_age=0)
        await wait_retired(raw, ["big"])
        assert second.saw("event=job_started room=big")
        assert second.stop() == 0
        async with RedisRoomStore(redis_server.url) as fresh:
            assert len((await fresh.open("big")).replica.doc.get("bulk", type=Map)) == 20_000
        durable = Replica.open(room_path(data, "big"))
        try:
            assert len(durable.doc.get("bulk", type=Map)) == 20_000
        finally:
            durable.close()
    finally:
        for worker in (first, second):
            if worker is not None and worker.process.poll() is None:
                worker.kill()
        await raw.aclose()
