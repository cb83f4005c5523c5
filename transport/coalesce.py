"""When a connection's writer holds a lone update back to merge more into it, and one merge
of a run of updates shared by every connection that sends the same run.

An isolated write goes out at once. In a burst (the previous frame left less than BURST_GAP
ago) the writer first polls the event loop for FIRST_WINDOW while every turn adds to its
queue; each window that ends with updates still arriving doubles the next, up to MAX_WINDOW,
and from the second window on the writer simply sleeps through it instead of polling (a
stream is known to be on). A slept window keeps the stream on only if more than STREAM_RATE
updates a second arrived during it; a window that ends quiet, or slower than that, resets to
FIRST_WINDOW. So a writer flat out sends about one frame per 8 ms to each
peer and each receiver applies one merged update instead of hundreds, while a paced write
(even right after a flood) waits one turn of the loop at most.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from pycrdt import merge_updates

FIRST_WINDOW = 0.0005
"""Seconds of the first window of a burst (polled: it ends at the first quiet turn)."""

MAX_WINDOW = 0.008
"""Seconds of the longest window: the most a write in a sustained stream waits to be sent."""

BURST_GAP = 0.005
"""A lone update is only held back when the previous frame went out less than this long ago."""

STREAM_RATE = 500
"""Updates per second above which a slept window keeps the stream on (more than 4 in 8 ms): a
writer flat out, even slowed by a busy machine, stays above it; a paced writer below it gets
its next write sent at once."""


class BurstWindow:
    """One connection's coalescing window: how long its writer holds a lone queued update."""

    __slots__ = ("window", "last_sent")

    def __init__(self) -> None:
        self.window = FIRST_WINDOW
        self.last_sent = 0.0

    def in_burst(self) -> bool:
        """True when the previous frame went out less than BURST_GAP ago."""
        return time.monotonic() - self.last_sent < BURST_GAP

    def sent(self) -> None:
        """Note that a frame just went out."""
        self.last_sent = time.monotonic()

    async def gather(self, queued: Callable[[], int], full: Callable[[], bool]) -> None:
        """Wait while updates keep arriving (`queued()` grows), at most the current window or
        until `full()` (polled windows only); then set the next window (doubled if the stream
        went on, else reset)."""
        if self.window > FIRST_WINDOW:
            size = queued()
            await asyncio.sleep(self.window)
            self._next(queued() - size > STREAM_RATE * self.window)
            return
        deadline = time.monotonic() + self.window
        size = queued()
        while True:
            await asyncio.sleep(0)
            grown = queued()
            if grown == size:
                self._next(False)
                return
            if full():
                return
            if time.monotonic() >= deadline:
                self._next(True)
                return
            size = grown

    def _next(self, streaming: bool) -> None:
        """Double the window while a stream goes on; reset it when a window ended quiet."""
        self.window = min(self.window * 2, MAX_WINDOW) if streaming else FIRST_WINDOW


class RunMerger:
    """Merges a run of queued updates; the connections of one mesh share one, so a local
    burst queued to every peer (the same bytes objects) is merged once, not once per peer."""

    __slots__ = ("_run", "_merged")

    def __init__(self) -> None:
        self._run: list[bytes] = []
        self._merged = b""

    def merge(self, updates: list[bytes]) -> bytes:
        """One update equivalent to `updates` (loop thread only)."""
        if len(updates) == 1:
            return updates[0]
        run = self._run
        if len(run) == len(updates) and all(a is b for a, b in zip(run, updates, strict=True)):
            return self._merged
        merged = merge_updates(*updates)
        self._run, self._merged = updates, merged
        return merged
