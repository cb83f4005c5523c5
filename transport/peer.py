"""One mesh connection: its Session, a bounded send queue and the task that drains it.

Anything may queue (the replica's update listener runs in whatever thread wrote); only
the connection's writer task, on the event loop, encodes and sends. The queue is bounded
in items and bytes. When a peer stops reading and the queue fills, the queue is dropped
and the peer is resynced instead: one diff from the best known lower bound of its state
(its last step 1 vector merged with everything already handed to its socket), computed
when the socket drains, so memory stays bounded however far behind it falls.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed

from replica.replica import Replica
from replica.statevector import decode_state_vector, encode_state_vector, missing_from
from transport import closecodes
from transport.coalesce import BurstWindow, RunMerger
from transport.limits import Limits
from transport.messages import EMPTY_UPDATE
from transport.relay import AdvertisedLinks
from transport.session import Role, Session
from transport.updates import UpdateFormatError, UpdateTooLargeError, split_update

log = logging.getLogger(__name__)

SPLIT_IN_THREAD_BYTES = 4 * 1024 * 1024
"""Updates at least this big are cut into frames off the event loop."""

class Kind(enum.Enum):
    """What a queued item is."""

    UPDATE = "update"
    """A document update; consecutive ones are merged into one frame."""
    FRAME = "frame"
    """A ready frame (hello, step 1, awareness, permission denied)."""
    STEP2 = "step2"
    """A step 2 owed to the peer, computed when sent so it is as fresh and small as possible."""


@dataclass(slots=True)
class _Item:
    """One queued item; `payload` is update bytes, a frame, or a step 1 state vector."""

    kind: Kind
    payload: bytes
    seq: int
    essential: bool = False
    empty_step2: bool = False


class SendQueue:
    """Thread-safe bounded FIFO of outgoing items; overflow turns into a resync request."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._items: deque[_Item] = deque()
        self._bytes = 0
        self._seq = 0
        self.resync_requested = False
        self.high_water_items = 0
        self.high_water_bytes = 0
        self.dropped_items = 0
        self.overflows = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size_bytes(self) -> int:
        """Bytes currently queued."""
        return self._bytes

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest item ever queued."""
        return self._seq

    def put(self, kind: Kind, payload: bytes, *, essential: bool = False, empty_step2: bool = False) -> bool:
        """Queue an item; False if it was dropped because the peer is being resynced."""
        size = len(payload)
        with self._lock:
            if self.resync_requested and not essential:
                self.dropped_items += 1
                return False
            if not essential and self._items and (
                len(self._items) + 1 > self.max_items or self._bytes + size > self.max_bytes
            ):
                self._overflow()
                self.dropped_items += 1
                return False
            self._seq += 1
            self._items.append(_Item(kind, payload, self._seq, essential, empty_step2))
            self._bytes += size
            self.high_water_items = max(self.high_water_items, len(self._items))
            self.high_water_bytes = max(self.high_water_bytes, self._bytes)
            return True

    def put_front(self, frames: list[bytes]) -> None:
        """Queue essential frames ahead of everything (opening frames held back for a hello).

        They get sequence number 0, so that sequence numbers stay in queue order.
        """
        with self._lock:
            for frame in reversed(frames):
                self._items.appendleft(_Item(Kind.FRAME, frame, 0, essential=True))
                self._bytes += len(frame)

    def _overflow(self) -> None:
        """Drop everything but essential frames and ask for a resync (lock held)."""
        kept = deque(item for item in self._items if item.essential)
        self.dropped_items += len(self._items) - len(kept)
        self._items = kept
        self._bytes = sum(len(item.payload) for item in kept)
        self.resync_requested = True
        self.overflows += 1

    def start_resync(self) -> None:
        """Forget queued non-essential items (the resync covers them) and clear the request."""
        with self._lock:
            kept = deque(item for item in self._items if item.essential)
            self.dropped_items += len(self._items) - len(kept)
            self._items = kept
            self._bytes = sum(len(item.payload) for item in kept)
            self.resync_requested = False

    def lone_update(self) -> bool:
        """True when exactly one item is queued and it is a document update."""
        with self._lock:
            return len(self._items) == 1 and self._items[0].kind is Kind.UPDATE

    def pop(self, max_merge_bytes: int) -> list[_Item]:
        """The next item, or a run of consecutive updates totalling at most `max_merge_bytes`."""
        with self._lock:
            if not self._items:
                return []
            first = self._items.popleft()
            taken = [first]
            size = len(first.payload)
            if first.kind is Kind.UPDATE:
                while (
                    self._items
                    and self._items[0].kind is Kind.UPDATE
                    and size + len(self._items[0].payload) <= max_merge_bytes
                ):
                    item = self._items.popleft()
                    taken.append(item)
                    size += len(item.payload)
            self._bytes -= size
            return taken


class PeerConnection:
    """A websocket, its Session, its send queue and writer, and what we know of the peer."""

    def __init__(
        self,
        ws: Connection,
        session: Session,
        replica: Replica,
        limits: Limits,
        *,
        name: str,
        origin: str,
        sequence: int,
        awareness_snapshot: Callable[[], bytes | None],
        target: Any = None,
        merger: RunMerger | None = None,
    ) -> None:
        self.ws = ws
        self.session = session
        self.replica = replica
        self.limits = limits
        self.name = name
        self.origin = origin
        self.sequence = sequence
        self.key = f"{name}#{sequence}"
        self.target = target
        self.awareness_snapshot = awareness_snapshot
        self.queue = SendQueue(limits.send_queue_messages, limits.send_queue_bytes)
        self.counters: Counter[str] = Counter()
        self.connected_at = time.time()
        self.last_seen: float | None = None
        self.synced_at: float | None = None
        self.peer_replica_id: str | None = None
        self.links = AdvertisedLinks()
        """The replica ids the peer says it is connected to (transport.relay)."""
        self.peer_digest: bytes | None = None
        self.start_digest: bytes | None = None
        self.start_state_vector: bytes = b"\x00"
        self.peer_state_vector: dict[int, int] = {}
        self.sent_state_vector: dict[int, int] = {}
        self.received_state_vector: dict[int, int] = {}
        self.step1_received = 0
        self.read_only_strikes = 0
        self.repair_requested = False
        self.closing = False
        self.close_code: int | None = None
        self._held: list[bytes] | None = None
        self._pending_mark: tuple[bytes, int] | None = None
        self._sent_mark: bytes | None = None
        self._burst = BurstWindow()
        self._merger = merger or RunMerger()
        self._answered = False
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def role(self) -> Role:
        """Whether we dialed (DIALER) or accepted (LISTENER) this connection."""
        return self.session.role

    # -- queueing (any thread) ------------------------------------------------------------

    def queue_update(self, update: bytes) -> None:
        """Queue a document update for this peer (callable from any thread)."""
        self.queue.put(Kind.UPDATE, update)
        self._notify()

    def queue_frame(self, frame: bytes, *, essential: bool = False) -> None:
        """Queue a ready frame (loop thread: frames come from the Session)."""
        self.queue.put(Kind.FRAME, frame, essential=essential)
        self._notify()

    def queue_step2(self, state_vector: bytes, *, empty: bool = False) -> None:
        """Owe the peer a step 2 for `state_vector`, or an empty one when digests matched."""
        self.queue.put(Kind.STEP2, state_vector, empty_step2=empty)
        self._notify()

    def _notify(self) -> None:
        """Wake the writer, from whichever thread queued."""
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
            return
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:
            pass

    # -- opening ------------------------------------------------------------------------

    def hold_opening(self, frames: list[bytes]) -> None:
        """Keep the opening frames until `release_opening` (a listener waiting for a hello)."""
        self._held = frames

    def release_opening(self, first: list[bytes] | None = None) -> None:
        """Queue `first` (our hello reply) then the held opening frames, and start writing."""
        held, self._held = self._held or [], None
        self.queue.put_front((first or []) + held)
        self.start_writer()

    @property
    def holding(self) -> bool:
        """True while the opening frames wait for the peer's hello."""
        return self._held is not None

    def start_writer(self) -> None:
        """Start the writer task (idempotent)."""
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(
                self._run_writer(), name=f"agentstate-writer-{self.name}"
            )
        self._wake.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until everything queued was sent (True), or the writer ended or `timeout` passed."""
        deadline = time.monotonic() + timeout
        while len(self.queue) or not self._idle.is_set():
            if self._writer is None or self._writer.done() or self.closing:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._idle.wait(), min(remaining, 0.05))
            except TimeoutError:
                continue
        return True

    async def stop_writer(self) -> None:
        """Cancel the writer task and wait for it."""
        if self._writer is not None:
            self._writer.cancel()
            try:
                await self._writer
            except (asyncio.CancelledError, Exception):
                pass

    # -- writing (loop only) --------------------------------------------------------------

    async def _run_writer(self) -> None:
        """Drain the queue for the life of the connection; an unexpected failure closes it (1011)."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._idle.clear()
                try:
                    await self._drain_queue()
                finally:
                    if not len(self.queue):
                        self._idle.set()
        except ConnectionClosed:
            pass
        except Exception:
            if not self.closing:
                log.exception("event=writer_failed peer=%s", self.name)
                self.closing = True
                await self.ws.close(closecodes.INTERNAL_ERROR, closecodes.REASONS[closecodes.INTERNAL_ERROR])
        finally:
            self._idle.set()

    async def _drain_queue(self) -> None:
        """Send queued items until the queue is empty, resyncing first if it overflowed."""
        while True:
            if self.queue.resync_requested:
                await self._resync()
            if self._burst.in_burst() and self.queue.lone_update():
                await self._burst.gather(
                    self.queue.__len__, lambda: self.queue.size_bytes >= self.limits.batch_bytes
                )
            if self._pending_mark is None and len(self.queue):
                self._pending_mark = (self.replica.state_vector(), self.queue.last_seq)
            items = self.queue.pop(min(self.limits.batch_bytes, self.limits.max_update_size))
            if not items:
                return
            first = items[0]
            if first.kind is Kind.UPDATE:
                updates = [item.payload for item in items]
                merged = self._merger.merge(updates)
                self.counters["updates_batched"] += len(updates)
                await self._send_document(merged, final_step2=False)
            elif first.kind is Kind.STEP2:
                await self._send_step2(first)
            else:
                await self._send_frame(first.payload, "frame")
            self._mark_sent(items[-1].seq)

    def _mark_sent(self, seq: int) -> None:
        """Advance what the peer is known to hold once every item of the pending mark is out.

        Only after our first step 2 went out: what we held before this connection began
        reaches the peer through that step 2, not through the queue.
        """
        if self._pending_mark is not None and seq >= self._pending_mark[1]:
            if self._answered:
                # decoded lazily (known_peer_state): our state vector only grows, so a
                # later mark covers every earlier one and only the latest is kept
                self._sent_mark = self._pending_mark[0]
            self._pending_mark = None

    def _merge_sent(self, state: dict[int, int]) -> None:
        """Merge `state` (all of which the peer now holds or will) into the sent vector."""
        for client, clock in state.items():
            if clock > self.sent_state_vector.get(client, 0):
                self.sent_state_vector[client] = clock

    def note_received(self, start: dict[int, int], after: bytes) -> None:
        """Our state vector before (decoded) and after applying one of the peer's updates.

        Clocks that advanced are (almost always) the peer's own structs, so it holds them.
        Kept apart from the hard lower bound used for resyncs: pending structs of a third
        peer released by this update advance clocks too. Used for status only.
        """
        for client, clock in decode_state_vector(after).items():
            if clock > start.get(client, 0) and clock > self.received_state_vector.get(client, 0):
                self.received_state_vector[client] = clock

    def note_peer_state(self, state: dict[int, int]) -> None:
        """Merge a lower bound of the peer's state (its step 1 vector, say) into what we know."""
        for client, clock in state.items():
            if clock > self.peer_state_vector.get(client, 0):
                self.peer_state_vector[client] = clock

    def known_peer_state(self) -> dict[int, int]:
        """Best lower bound of the peer's state: its last step 1 merged with what we sent."""
        if self._sent_mark is not None:
            self._merge_sent(decode_state_vector(self._sent_mark))
            self._sent_mark = None
        known = dict(self.peer_state_vector)
        for client, clock in self.sent_state_vector.items():
            if clock > known.get(client, 0):
                known[client] = clock
        return known

    def behind(self, ours: dict[int, int]) -> int:
        """How many of our operations the peer still lacks, as far as we can tell (for status)."""
        estimate = self.known_peer_state()
        for client, clock in self.received_state_vector.items():
            if clock > estimate.get(client, 0):
                estimate[client] = clock
        return missing_from(ours, estimate)

    async def _send_step2(self, item: _Item) -> None:
        """Answer a step 1: the empty update when digests matched, else the diff, split if big."""
        if item.empty_step2:
            self.counters["step2_empty"] += 1
            await self._send_frame(self.session.send_step2(EMPTY_UPDATE), "step2")
            self._merge_sent(decode_state_vector(self.start_state_vector))
        else:
            before = decode_state_vector(self.replica.state_vector())
            update = self.replica.diff(item.payload)
            await self._send_document(update, final_step2=True)
            self._merge_sent(before)
        self._answered = True

    async def _resync(self) -> None:
        """Replace a dropped queue by one diff from the peer's known state (and awareness)."""
        self.queue.start_resync()
        self._pending_mark = None
        self.counters["resyncs"] += 1
        known = self.known_peer_state()
        before = decode_state_vector(self.replica.state_vector())
        update = self.replica.diff(encode_state_vector(known) if known else None)
        log.info(
            "event=resync peer=%s reason=send_queue_full dropped=%d diff_bytes=%d",
            self.name, self.queue.dropped_items, len(update),
        )
        await self._send_document(update, final_step2=True)
        self._merge_sent(before)
        self._answered = True
        snapshot = self.awareness_snapshot()
        if snapshot is not None:
            await self._send_frame(self.session.send_awareness(snapshot), "frame")

    async def _send_document(self, update: bytes, *, final_step2: bool) -> None:
        """Send an update in as many frames as the limit needs; the last is a step 2 if asked."""
        limit = self.limits.max_update_size
        if len(update) <= limit:
            parts = [update]
        else:
            try:
                if len(update) >= SPLIT_IN_THREAD_BYTES:
                    parts = await asyncio.to_thread(split_update, update, limit)
                else:
                    parts = split_update(update, limit)
            except (UpdateFormatError, UpdateTooLargeError) as error:
                self.counters["unsendable_updates"] += 1
                log.error("event=unsendable peer=%s bytes=%d limit=%d error=%r", self.name, len(update), limit, str(error))
                return
            self.counters["split_updates"] += 1
            self.counters["split_parts"] += len(parts)
        last = len(parts) - 1
        for index, part in enumerate(parts):
            if final_step2 and index == last:
                await self._send_frame(self.session.send_step2(part), "step2")
            else:
                await self._send_frame(self.session.send_update(part), "update")

    async def _send_frame(self, frame: bytes, kind: str) -> None:
        """Send one frame and count it."""
        await self.ws.send(frame)
        self._burst.sent()
        self.counters["messages_out"] += 1
        self.counters["bytes_out"] += len(frame)
        self.counters[f"{kind}_frames_out"] += 1
        self.counters[f"{kind}_bytes_out"] += len(frame)

    # -- status ---------------------------------------------------------------------------

    def describe(self, ours: dict[int, int]) -> dict[str, Any]:
        """A JSON-able view of this connection for status."""
        return {
            "name": self.name,
            "direction": "dial" if self.role is Role.DIALER else "accept",
            "replica_id": self.peer_replica_id,
            "agentstate": self.session.peer_hello is not None,
            "state": self.session.state.value,
            "synced": self.synced_at is not None,
            "read_only": self.session.peer_read_only,
            "connected_at": iso_time(self.connected_at),
            "last_seen": iso_time(self.last_seen),
            "behind": self.behind(ours),
            "queue": {
                "items": len(self.queue),
                "bytes": self.queue.size_bytes,
                "high_water_items": self.queue.high_water_items,
                "high_water_bytes": self.queue.high_water_bytes,
                "overflows": self.queue.overflows,
                "dropped_items": self.queue.dropped_items,
            },
            "counters": dict(self.counters),
        }


def iso_time(timestamp: float | None) -> str | None:
    """A UNIX time as ISO 8601 UTC, or None."""
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
