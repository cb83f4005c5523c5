"""The change feed: typed events for every change, local or remote, as callbacks or an async iterator."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

Kind = Literal["task", "node", "edge", "counter", "lesson", "claim", "meta", "other"]
Action = Literal["add", "update", "delete"]


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One change: which record and field, old and new value, and whether it came from a peer.

    `field` is None when the whole record was added or deleted; for nested collections it
    names the collection (`tags`) or the entry (`properties.estimate`).
    """

    kind: Kind
    id: str
    field: str | None
    action: Action
    old: Any
    new: Any
    origin: Literal["local", "process", "remote"]
    peer: str | None = None


ChangeCallback = Callable[[ChangeEvent], None]


class ChangeFeed:
    """Fan-out of change events to callbacks and async iterators; subscribers never block writers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[ChangeCallback] = []
        self._queues: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[ChangeEvent | None], int]] = []
        self.dropped = 0

    @property
    def active(self) -> bool:
        """True when anyone listens, so the replica only builds events when they are wanted."""
        return bool(self._callbacks or self._queues)

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call `callback` for every change, in commit order; returns the unsubscribe function."""
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    async def iterate(self, maxsize: int = 10_000) -> AsyncIterator[ChangeEvent]:
        """Yield changes as they happen; a consumer more than `maxsize` behind loses the oldest."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[ChangeEvent | None] = asyncio.Queue()
        entry = (loop, queue, maxsize)
        with self._lock:
            self._queues.append(entry)
        try:
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event
        finally:
            with self._lock:
                if entry in self._queues:
                    self._queues.remove(entry)

    def publish(self, events: list[ChangeEvent]) -> None:
        """Deliver events to every subscriber; a failing callback is logged, never propagated."""
        with self._lock:
            callbacks = list(self._callbacks)
            queues = list(self._queues)
        for event in events:
            for callback in callbacks:
                try:
                    callback(event)
                except Exception:
                    log.exception("change callback %r failed", callback)
        for loop, queue, maxsize in queues:
            try:
                loop.call_soon_threadsafe(self._put, queue, events, maxsize)
            except RuntimeError:
                pass

    def _put(self, queue: asyncio.Queue[ChangeEvent | None], events: list[ChangeEvent], maxsize: int) -> None:
        for event in events:
            if queue.qsize() >= maxsize:
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(event)

    def close(self) -> None:
        """End every async iterator."""
        with self._lock:
            queues = list(self._queues)
        for loop, queue, _ in queues:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except RuntimeError:
                pass
