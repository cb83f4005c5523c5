"""The compaction worker for rooms on Redis Streams (docs/hub.md, "Redis Streams").

Hubs queue one job per room on the jobs stream; workers read jobs with a consumer group
(XREADGROUP) and take over jobs idle past their lease (XAUTOCLAIM), so a dead worker's job is
finished by another. A job folds the room's snapshot and stream tail up to id X, applies the
result to the room's durable replica under DIR/rooms/ (fsynced), stores the new snapshot only if
X is newer than the stored one (compare-and-set in Lua), then trims the entries that the stored
snapshot covers and that are older than the minimum age. A job stays in its worker's pending
list between runs (its idle time is the delay before the next run) and is retired once the
stream is empty.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrdt import Doc
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from replica.durability import Durability
from replica.errors import InvalidUpdateError
from replica.replica import Replica
from transport.ratelog import RateLimitedLog
from transport.redis_store import (
    DEFAULT_BATCH,
    DEFAULT_PREFIX,
    LUA_ID,
    READ_SCRIPT,
    REDIS_ORIGIN,
    ROOM_FIELD,
    UPDATE_FIELD,
    RoomKeys,
    backoff_delay,
    entry_fields,
    integrate_doc,
    jobs_key,
    redis_client,
    workers_group,
)
from transport.rooms import ROOMS_DIR, InvalidRoomError, check_room_name, room_directory_name
from transport.updates import UpdateFormatError

log = logging.getLogger(__name__)

DEFAULT_LEASE = 10.0
"""Seconds a job may sit idle in a worker's pending list before any worker takes it: both the
delay between two runs of a room's job and how long a dead worker's job waits for a new one."""
DEFAULT_MIN_AGE = 60.0
"""Seconds an entry stays in its stream after a snapshot covers it, for hubs still reading it."""
POLL = 1.0
"""Longest XREADGROUP block, so that idle jobs are claimed about this often."""

LUA_FORMAT = """
local function format_id(ms, seq)
  return string.format('%.0f-%.0f', ms, seq)
end
"""

SNAPSHOT_SCRIPT = LUA_ID + """
local current = redis.call('HGET', KEYS[1], 'id')
if current and not newer(ARGV[2], current) then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'id', ARGV[2], 'by', ARGV[3])
return 1
"""
"""KEYS: snapshot hash; ARGV: state, the last stream id it covers, worker. Stores the snapshot
only if it covers a newer id than the stored one (another worker may have stored a newer one)."""

FINISH_SCRIPT = LUA_ID + LUA_FORMAT + """
local trimmed = 0
local snap = redis.call('HGET', KEYS[4], 'id')
if snap then
  local ms, seq = parse_id(snap)
  local covered = format_id(ms, seq + 1)
  local now = redis.call('TIME')
  local old_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[4])
  if old_ms < 0 then old_ms = 0 end
  local old = format_id(old_ms, 0)
  local minid = covered
  if newer(covered, old) then minid = old end
  trimmed = redis.call('XTRIM', KEYS[1], 'MINID', minid)
end
local marker = redis.call('GET', KEYS[3])
if marker and marker ~= ARGV[2] then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[2], ARGV[2])
  return {trimmed, 2}
end
if redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[2], ARGV[2])
  if marker then redis.call('DEL', KEYS[3]) end
  return {trimmed, 1}
end
if not marker then redis.call('SET', KEYS[3], ARGV[2]) end
redis.call('XCLAIM', KEYS[2], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return {trimmed, 0}
"""
"""KEYS: updates stream, jobs stream, job marker, snapshot hash; ARGV: group, job id, worker,
minimum age (ms). Trims entries below min(stored snapshot id + 1, now - minimum age); then
retires the job if the stream is empty (1) or it is a duplicate of the room's job (2), else
keeps it in this worker's pending list with its idle time reset (0): it runs again after a lease."""

KEEP = 0
RETIRED = 1
DUPLICATE = 2


@dataclass(frozen=True)
class JobResult:
    """What one run of a room's job did."""

    room: str
    entries: int
    covered_id: str | None
    snapshot_stored: bool
    trimmed: int
    outcome: int


def room_path(data: Path | str, room: str) -> Path:
    """The room's durable replica directory: DIR/rooms/<percent-encoded name>, as a local hub keeps it."""
    return Path(data) / ROOMS_DIR / room_directory_name(room)


def fold(state: bytes | None, entries: list[Any]) -> tuple[Doc, bytes | None, Counter[str]]:
    """A scratch Doc holding a snapshot plus stream entries; the last entry's id; bad entries by reason."""
    doc = Doc()
    rejected: Counter[str] = Counter()
    if state:
        try:
            doc.apply_update(state)
        except ValueError:
            rejected["malformed_snapshot"] += 1
    last: bytes | None = None
    for entry_id, raw in entries:
        last = entry_id
        update = entry_fields(raw).get(UPDATE_FIELD)
        if not update:
            rejected["missing_update"] += 1
            continue
        try:
            integrate_doc(doc, update)
        except (UpdateFormatError, InvalidUpdateError):
            rejected["malformed_update"] += 1
    return doc, last, rejected


def persist(path: Path, doc: Doc, durability: Durability) -> None:
    """Apply what the durable replica at `path` lacks of `doc`, and fsync it before returning."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    replica = Replica.open(path, durability=durability)
    try:
        delta = doc.get_update(replica.state_vector())
        replica.apply_update(delta, origin=REDIS_ORIGIN)
        replica.flush()
    finally:
        replica.close()


class RedisWorker:
    """Compacts rooms' streams into snapshots and durable replicas, then trims them (see module doc)."""

    def __init__(
        self,
        url: str,
        data: Path | str,
        *,
        prefix: str = DEFAULT_PREFIX,
        consumer: str | None = None,
        lease: float = DEFAULT_LEASE,
        min_age: float = DEFAULT_MIN_AGE,
        batch: int = DEFAULT_BATCH,
        durability: Durability | str = Durability.BALANCED,
    ) -> None:
        if lease <= 0 or min_age < 0 or batch <= 0:
            raise ValueError("lease and batch must be positive, min_age not negative")
        self.url = url
        self.data = Path(data)
        self.prefix = prefix
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.lease = lease
        self.min_age = min_age
        self.batch = batch
        self.durability = Durability.parse(durability)
        self.jobs = jobs_key(prefix)
        self.group = workers_group(prefix)
        self.redis = redis_client(url, socket_timeout=POLL + 10.0)
        self._read = self.redis.register_script(READ_SCRIPT)
        self._snapshot = self.redis.register_script(SNAPSHOT_SCRIPT)
        self._finish = self.redis.register_script(FINISH_SCRIPT)
        self._log = RateLimitedLog(log)
        self.counters: Counter[str] = Counter()
        """jobs, claimed, compactions, snapshots, trimmed, retired, reconnects, rejected:<reason>."""

    async def ensure_group(self) -> None:
        """Create the jobs stream and the workers' consumer group if missing (from the stream's start)."""
        try:
            await self.redis.xgroup_create(self.jobs, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event) -> None:
        """Take and run jobs until `stop` is set; Redis outages are waited out with backoff."""
        failures = 0
        ready = False
        while not stop.is_set():
            try:
                if not ready:
                    await self.ensure_group()
                    ready = True
                    log.info("event=worker_ready consumer=%s url=%s data=%s", self.consumer, self.url, self.data)
                await self.run_once(block=True)
                if failures:
                    log.info("event=redis_reconnected url=%s after_failures=%d", self.url, failures)
                failures = 0
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                failures += 1
                self.counters["reconnects"] += 1
                self._log.warning("redis", "event=redis_unreachable url=%s error=%s", self.url, exc)
                await _wait(stop, backoff_delay(failures))
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                ready = False

    async def run_once(self, *, block: bool = False) -> list[JobResult]:
        """Claim jobs idle past the lease, then read new ones (waiting up to POLL if `block`); run them."""
        results = []
        lease_ms = int(self.lease * 1000)
        claimed = await self.redis.xautoclaim(self.jobs, self.group, self.consumer, lease_ms, "0-0", count=16)
        entries = [entry for entry in (claimed[1] if len(claimed) > 1 else []) if entry and entry[1] is not None]
        self.counters["claimed"] += len(entries)
        for job_id, fields in entries:
            results.append(await self._run_job(job_id, fields))
        wait = int(min(POLL, self.lease / 2) * 1000) if block and not entries else None
        reply = await self.redis.xreadgroup(self.group, self.consumer, {self.jobs: ">"}, count=16, block=wait)
        for _, new in reply or ():
            for job_id, fields in new:
                if fields is not None:
                    results.append(await self._run_job(job_id, fields))
        return results

    async def _run_job(self, job_id: bytes, fields: dict[bytes, bytes]) -> JobResult:
        """Run one room's job while renewing its lease; a job naming no valid room is dropped."""
        raw_room = entry_fields(fields).get(ROOM_FIELD, b"")
        try:
            room = raw_room.decode("utf-8")
            check_room_name(room)
        except (UnicodeDecodeError, InvalidRoomError):
            self._reject("bad_job", f"job {job_id!r} names no valid room: {raw_room[:80]!r}")
            await self.redis.xack(self.jobs, self.group, job_id)
            await self.redis.xdel(self.jobs, job_id)
            return JobResult("", 0, None, False, 0, RETIRED)
        self.counters["jobs"] += 1
        log.info("event=job_started room=%s job=%s consumer=%s", room, job_id.decode(), self.consumer)
        renew = asyncio.create_task(self._renew(job_id))
        try:
            result = await self.compact(room, job_id)
        finally:
            renew.cancel()
            await asyncio.gather(renew, return_exceptions=True)
        log.info("event=job_done room=%s job=%s entries=%d covered=%s stored=%s trimmed=%d outcome=%s",
                 room, job_id.decode(), result.entries, result.covered_id, result.snapshot_stored,
                 result.trimmed, ("keep", "retired", "duplicate")[result.outcome])
        return result

    async def _renew(self, job_id: bytes) -> None:
        """Reset the job's idle time every third of a lease, so no other worker takes a long job."""
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await self.redis.xclaim(self.jobs, self.group, self.consumer, 0, [job_id], justid=True)
            except RedisError as exc:
                self._log.warning("renew", "event=lease_renew_failed job=%s error=%s", job_id.decode(), exc)

    async def compact(self, room: str, job_id: bytes) -> JobResult:
        """Fold snapshot + tail up to X into the durable replica (fsynced), store the snapshot if X
        is newer than the stored one, then trim and retire or keep the job (FINISH_SCRIPT)."""
        keys = RoomKeys.of(self.prefix, room)
        state, _, tail = await self._read(keys=[keys.snapshot, keys.updates], args=["", self.batch])
        stored = False
        covered: bytes | None = None
        if tail:
            doc, covered, rejected = await asyncio.to_thread(fold, state, tail)
            for reason, count in rejected.items():
                self._reject(reason, f"room {room!r}: {count} entries", count)
            await asyncio.to_thread(persist, room_path(self.data, room), doc, self.durability)
            new_state = doc.get_update()
            stored = bool(await self._snapshot(keys=[keys.snapshot], args=[new_state, covered, self.consumer]))
            self.counters["compactions"] += 1
            self.counters["snapshots"] += stored
        trimmed, outcome = await self._finish(
            keys=[keys.updates, self.jobs, keys.job, keys.snapshot],
            args=[self.group, job_id, self.consumer, int(self.min_age * 1000)])
        self.counters["trimmed"] += int(trimmed)
        self.counters["retired"] += outcome != KEEP
        return JobResult(room, len(tail), covered.decode() if covered else None, stored, int(trimmed), int(outcome))

    def _reject(self, reason: str, detail: str, count: int = 1) -> None:
        """Count unusable input by reason and log it at a bounded rate."""
        self.counters[f"rejected:{reason}"] += count
        self._log.warning(reason, "event=redis_entry_rejected reason=%s detail=%s", reason, detail)

    def rejections(self) -> dict[str, int]:
        """Unusable jobs and stream entries seen so far, by reason."""
        return {key.partition(":")[2]: value for key, value in self.counters.items() if key.startswith("rejected:")}

    async def close(self) -> None:
        """Close the connections (a job left pending is taken over by another worker after its lease)."""
        await self.redis.aclose()

    async def __aenter__(self) -> RedisWorker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` is set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass

