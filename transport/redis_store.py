"""Rooms on Redis Streams: a `RoomStore` (transport.rooms) for stateless hubs (docs/hub.md).

A room opens as an in-memory Replica built from the room's compacted snapshot plus its stream's
tail, both read by one script (so a concurrent trim never leaves a gap). A client's update is
XADDed before the hub applies and relays it; one fan-out task per store follows every open
room's stream with one blocking XREAD and applies other hubs' entries with origin "redis", so
the room's Mesh relays them to its own clients. `transport.redis_worker` compacts the streams.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pycrdt import Doc
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from replica.datadir import new_replica_id
from replica.errors import ClosedError, InvalidUpdateError
from replica.replica import Replica
from replica.statevector import decode_state_vector
from transport.ratelog import RateLimitedLog
from transport.rooms import check_room_name
from transport.updates import UpdateFormatError, integrable_part

log = logging.getLogger(__name__)

REDIS_ORIGIN = "redis"
"""Origin of updates applied from a room's stream: not any connection's, so the Mesh relays them to all."""
DEFAULT_PREFIX = "agentstate"
UPDATE_FIELD = b"u"
HUB_FIELD = b"o"
CONNECTION_FIELD = b"c"
ROOM_FIELD = b"room"
ZERO_ID = b"0-0"
DEFAULT_BATCH = 10_000
"""Most stream entries read by one command (XREAD, XRANGE, the open script)."""
DEFAULT_BLOCK = 5.0
"""Seconds one blocking XREAD waits before it is issued again."""
DEFAULT_WRITE_TIMEOUT = 5.0
"""Seconds `before_apply` retries a write while Redis is away before it gives up."""
DEFAULT_RESYNC_AFTER = 30.0
"""A fan-out loop that read nothing for this long (Redis away, loop stalled) re-reads every room
from its snapshot when entries it has not seen may have been trimmed: keep it below the worker's
minimum entry age."""
CONNECT_TIMEOUT = 2.0
BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0

LUA_ID = """
local function parse_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function newer(a, b)
  local am, as = parse_id(a)
  local bm, bs = parse_id(b)
  return am > bm or (am == bm and as > bs)
end
"""
"""Stream id comparison for the scripts (ids are 'milliseconds-sequence')."""

APPEND_SCRIPT = """
local id = redis.call('XADD', KEYS[1], '*', 'u', ARGV[1], 'o', ARGV[2], 'c', ARGV[3])
if redis.call('EXISTS', KEYS[3]) == 0 then
  local job = redis.call('XADD', KEYS[2], '*', 'room', ARGV[4])
  redis.call('SET', KEYS[3], job)
end
return id
"""
"""KEYS: updates stream, jobs stream, job marker; ARGV: update, hub, connection, room.
Appends the update and, when the room has no compaction job yet, queues one (atomically)."""

READ_SCRIPT = LUA_ID + """
local snap = redis.call('HMGET', KEYS[1], 'state', 'id')
local after = ARGV[1]
local state = false
if snap[2] then
  if after == '' then
    state = snap[1]
    after = snap[2]
  elseif newer(snap[2], after) then
    local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
    if #first == 0 or newer(first[1][1], after) then
      state = snap[1]
      after = snap[2]
    end
  end
end
if after == '' then after = '0-0' end
local tail = redis.call('XRANGE', KEYS[2], '(' .. after, '+', 'COUNT', tonumber(ARGV[2]))
return {state, after, tail}
"""
"""KEYS: snapshot hash, updates stream; ARGV: the last id the reader holds ('' = nothing), count.
Returns [snapshot state or nil, id the tail follows, tail entries]. The snapshot is included on
open, and when entries after the reader's id may have been trimmed (the stream's first entry is
past it and the snapshot covers more): one script, so no trim can fall between the two reads."""


class StoreUnavailableError(RuntimeError):
    """Redis did not take a write in time (it is away, or refused it): the update is not acknowledged."""


@dataclass(frozen=True)
class RoomKeys:
    """A room's Redis keys; `{room}` is a cluster hash tag, so one room's keys share a slot."""

    updates: str
    snapshot: str
    job: str

    @classmethod
    def of(cls, prefix: str, room: str) -> RoomKeys:
        """The keys of `room` under `prefix`."""
        tag = f"{prefix}:{{{room}}}"
        return cls(f"{tag}:updates", f"{tag}:snapshot", f"{tag}:job")


def jobs_key(prefix: str) -> str:
    """The stream of compaction jobs (one entry per room that has a job)."""
    return f"{prefix}:jobs"


def workers_group(prefix: str) -> str:
    """The consumer group the workers read jobs with."""
    return f"{prefix}:workers"


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    """A stream id 'ms-seq' as a pair that sorts as Redis does."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def entry_fields(raw: Any) -> dict[bytes, bytes]:
    """A stream entry's fields as a dict, whether a client parsed them or a script returned them flat."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, (list, tuple)):
        return {raw[i]: raw[i + 1] for i in range(0, len(raw) - 1, 2)}
    return {}


def backoff_delay(attempt: int) -> float:
    """Exponential backoff with jitter: about 50 ms, doubling, capped at 2 s."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(attempt, 16)) * (0.5 + random.random() / 2)


def integrate(replica: Replica, update: bytes, origin: str) -> bool:
    """Apply the part of a stream entry that integrates now; True if it changed anything.

    What does not integrate yet is dropped, as the Mesh drops it from a peer: the client it
    came from is asked for it again by its hub, and that answer is a later entry of the stream.
    Raises UpdateFormatError or InvalidUpdateError for bytes that are not a Yjs update."""
    part, _ = integrable_part(update, decode_state_vector(replica.state_vector()))
    return replica.apply_update(part, origin=origin)


def integrate_doc(doc: Doc, update: bytes) -> None:
    """`integrate` for a bare Doc (the worker's scratch copy of a room)."""
    part, _ = integrable_part(update, decode_state_vector(doc.get_state()))
    try:
        doc.apply_update(part)
    except ValueError as exc:
        raise InvalidUpdateError(f"not a valid Yjs update: {exc}") from exc


def redis_client(url: str, socket_timeout: float) -> Redis:
    """A redis-py asyncio client that fails fast (no retry of its own): callers retry with backoff."""
    return Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=socket_timeout,
                          retry=Retry(NoBackoff(), 0))


class RedisRoom:
    """One room loaded from Redis: an in-memory replica kept current by the store's fan-out."""

    def __init__(self, store: RedisRoomStore, name: str, replica: Replica, last_id: bytes) -> None:
        self.store = store
        self.name = name
        self.keys = RoomKeys.of(store.prefix, name)
        self.replica = replica
        self.last_id = last_id
        """Newest stream entry this room has seen (applied, or skipped as this hub's own)."""
        self.closed = False

    async def before_apply(self, update: bytes, *, origin: str | None = None) -> None:
        """XADD a client's update (origin: its connection) before the hub applies and relays it.

        Raises StoreUnavailableError when Redis did not take it within the store's write timeout."""
        await self.store.append(self, update, origin)

    async def close(self) -> None:
        """Stop following the room's stream and drop its replica."""
        await self.store.close_room(self)


class RedisRoomStore:
    """Rooms kept in Redis Streams, for hubs that hold no state of their own (see docs/hub.md)."""

    def __init__(
        self,
        url: str,
        *,
        hub_id: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        block: float = DEFAULT_BLOCK,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        resync_after: float = DEFAULT_RESYNC_AFTER,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        if block <= 0 or write_timeout <= 0 or resync_after <= 0 or batch <= 0:
            raise ValueError("block, write_timeout, resync_after and batch must be positive")
        self.url = url
        self.hub_id = hub_id or f"hub-{new_replica_id()}"
        self.prefix = prefix
        self.block = block
        self.write_timeout = write_timeout
        self.resync_after = resync_after
        self.batch = batch
        self.redis = redis_client(url, socket_timeout=block + write_timeout)
        self._append_script = self.redis.register_script(APPEND_SCRIPT)
        self._read_script = self.redis.register_script(READ_SCRIPT)
        self._rooms: dict[str, RedisRoom] = {}
        self._by_key: dict[bytes, RedisRoom] = {}
        self._changed = asyncio.Event()
        self._fanout: asyncio.Task[None] | None = None
        self._closed = False
        self._log = RateLimitedLog(log)
        self.counters: Counter[str] = Counter()
        """appended, applied, own_skipped, reconnects, resyncs, rejected:<reason>."""
        self.connected = True
        """False from a failed Redis call until the next one that succeeds."""

    # -- rooms ---------------------------------------------------------------------------------

    def rooms(self) -> list[str]:
        """Names of the rooms open now."""
        return list(self._rooms)

    async def open(self, name: str) -> RedisRoom:
        """Load `name` as an in-memory replica from its snapshot and stream, and follow its stream.

        Raises InvalidRoomError for a bad name, ValueError for one already open here,
        StoreUnavailableError if Redis is away."""
        check_room_name(name)
        if self._closed:
            raise StoreUnavailableError("the room store is closed")
        if name in self._rooms:
            raise ValueError(f"room {name!r} is already open in this store")
        replica = Replica(Doc(), new_replica_id())
        room = RedisRoom(self, name, replica, ZERO_ID)
        self._rooms[name] = room
        try:
            await self._catch_up(room, first=True)
        except BaseException:
            del self._rooms[name]
            replica.close()
            raise
        self._by_key[room.keys.updates.encode()] = room
        self._changed.set()
        if self._fanout is None:
            self._fanout = asyncio.create_task(self._fanout_loop(), name="agentstate-redis-fanout")
        return room

    async def close_room(self, room: RedisRoom) -> None:
        """Unload `room` (idempotent): the fan-out stops reading its stream."""
        if room.closed:
            return
        room.closed = True
        if self._rooms.get(room.name) is room:
            del self._rooms[room.name]
            self._by_key.pop(room.keys.updates.encode(), None)
        self._changed.set()
        room.replica.close()

    async def close(self) -> None:
        """Stop the fan-out, unload every room and close the connections."""
        if self._closed:
            return
        self._closed = True
        if self._fanout is not None:
            self._fanout.cancel()
            await asyncio.gather(self._fanout, return_exceptions=True)
        for room in list(self._rooms.values()):
            await self.close_room(room)
        await self.redis.aclose()

    async def __aenter__(self) -> RedisRoomStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- writes --------------------------------------------------------------------------------

    async def append(self, room: RedisRoom, update: bytes, origin: str | None = None) -> bytes:
        """XADD `update` to the room's stream (queueing its compaction job if it has none); its id.

        Connection errors are retried with backoff until `write_timeout`: a retried XADD that had
        in fact landed leaves a duplicate entry, which is harmless (applying an update twice is a
        no-op). Then StoreUnavailableError: the caller must not acknowledge the update."""
        if room.closed:
            raise StoreUnavailableError(f"room {room.name!r} is closed")
        if not isinstance(update, (bytes, bytearray)) or not update:
            raise ValueError("an update must be non-empty bytes")
        keys = [room.keys.updates, jobs_key(self.prefix), room.keys.job]
        args = [bytes(update), self.hub_id, origin or "", room.name]
        entry_id: bytes = await self._call(lambda: self._append_script(keys=keys, args=args),
                                           f"append to room {room.name!r}")
        self.counters["appended"] += 1
        return entry_id

    async def _call(self, make: Any, what: str) -> Any:
        """Await `make()`, retrying connection errors with backoff until write_timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.write_timeout
        attempt = 0
        while True:
            try:
                result = await make()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self.connected = False
                attempt += 1
                delay = backoff_delay(attempt)
                if loop.time() + delay > deadline:
                    raise StoreUnavailableError(f"Redis at {self.url} is unreachable; could not {what} "
                                                f"within {self.write_timeout:g} s: {exc}") from exc
                await asyncio.sleep(delay)
            except RedisError as exc:
                raise StoreUnavailableError(f"Redis refused to {what}: {exc}") from exc
            else:
                self.connected = True
                return result

    # -- reads ---------------------------------------------------------------------------------

    async def _catch_up(self, room: RedisRoom, *, first: bool = False) -> None:
        """Bring `room` up to its stream's end: snapshot + tail on open, or after a possible gap."""
        after = b"" if first else room.last_id
        while True:
            state, tail_from, tail = await self._call(
                lambda: self._read_script(keys=[room.keys.snapshot, room.keys.updates], args=[after, self.batch]),
                f"read room {room.name!r}")
            if room.closed:
                return
            if state:
                self._apply_snapshot(room, state)
                room.last_id = max(room.last_id, tail_from, key=parse_id)
            self._apply_entries(room, tail, skip_own=not first)
            if len(tail) < self.batch:
                return
            after = room.last_id

    def _apply_snapshot(self, room: RedisRoom, state: bytes) -> None:
        """Apply what a stored snapshot holds that the room lacks (only that is relayed to clients)."""
        if not decode_state_vector(room.replica.state_vector()):
            delta = state
        else:
            scratch = Doc()
            scratch.apply_update(state)
            delta = scratch.get_update(room.replica.state_vector())
        try:
            room.replica.apply_update(delta, origin=REDIS_ORIGIN)
        except InvalidUpdateError as exc:
            self._reject(room, "malformed_snapshot", exc)

    def _apply_entries(self, room: RedisRoom, entries: list[Any], *, skip_own: bool) -> None:
        """Apply stream entries newer than the room's last id, skipping this hub's own when asked."""
        for entry_id, fields in entries:
            if room.closed:
                return
            if parse_id(entry_id) <= parse_id(room.last_id):
                continue
            room.last_id = entry_id
            fields = entry_fields(fields)
            if skip_own and fields.get(HUB_FIELD) == self.hub_id.encode():
                self.counters["own_skipped"] += 1
                continue
            update = fields.get(UPDATE_FIELD)
            if not update:
                self._reject(room, "missing_update", f"entry {entry_id!r} has no update field")
                continue
            try:
                integrate(room.replica, update, REDIS_ORIGIN)
            except (UpdateFormatError, InvalidUpdateError) as exc:
                self._reject(room, "malformed_update", f"entry {entry_id!r}: {exc}")
                continue
            except ClosedError:
                return
            self.counters["applied"] += 1

    def _reject(self, room: RedisRoom, reason: str, detail: object) -> None:
        """Count a stream entry that could not be used and log it at a bounded rate."""
        self.counters[f"rejected:{reason}"] += 1
        self._log.warning(reason, "event=redis_entry_rejected room=%s reason=%s detail=%s", room.name, reason, detail)

    def rejections(self) -> dict[str, int]:
        """Stream entries skipped so far, by reason."""
        return {key.partition(":")[2]: value for key, value in self.counters.items() if key.startswith("rejected:")}

    # -- the fan-out ---------------------------------------------------------------------------

    async def _fanout_loop(self) -> None:
        """One blocking XREAD over every open room's stream, re-issued when rooms open or close."""
        failures = 0
        resync = False
        last_read = time.monotonic()
        while not self._closed:
            if not self._by_key:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                if resync or time.monotonic() - last_read > self.resync_after:
                    self.counters["resyncs"] += 1
                    for room in list(self._rooms.values()):
                        await self._catch_up(room)
                    resync = False
                reply = await self._read_once()
                last_read = time.monotonic()
                if failures:
                    log.info("event=redis_reconnected url=%s after_failures=%d", self.url, failures)
                    failures = 0
                self.connected = True
                for key, entries in reply or ():
                    room = self._by_key.get(key)
                    if room is not None:
                        self._apply_entries(room, entries, skip_own=True)
            except asyncio.CancelledError:
                raise
            except (RedisError, StoreUnavailableError, OSError) as exc:
                self.connected = False
                failures += 1
                resync = True
                self.counters["reconnects"] += 1
                self._log.warning("fanout", "event=redis_fanout_failed url=%s error=%s", self.url, exc)
                await asyncio.sleep(backoff_delay(failures))
            except Exception:
                log.exception("event=redis_fanout_error")
                failures += 1
                await asyncio.sleep(backoff_delay(failures))

    async def _read_once(self) -> Any:
        """One XREAD BLOCK over the open rooms, abandoned (None) as soon as a room opens or closes."""
        self._changed.clear()
        streams = {key: room.last_id for key, room in self._by_key.items()}
        read = asyncio.ensure_future(self.redis.xread(streams, count=self.batch, block=int(self.block * 1000)))
        wake = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({read, wake}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
            if not read.done():
                read.cancel()
            await asyncio.gather(wake, read, return_exceptions=True)
        if read.cancelled():
            return None
        return read.result()

    def stats(self) -> dict[str, Any]:
        """Counters and connection state (for status and metrics)."""
        return {"hub_id": self.hub_id, "connected": self.connected, "rooms": len(self._rooms),
                "counters": dict(self.counters), "rejections": self.rejections()}
