"""The state digest a node puts in its hello, cached until the next change, never making a peer wait.

A mesh or a hub room keeps one `DigestCache` per replica: the update listener calls
`changed()` (from any thread), an opening connection asks `opening()`, and
`refresh_loop()` recomputes a costly digest once writes pause. docs/protocol.md,
"Cheap reconnect of an up-to-date peer: the digest", gives the rules.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from replica.replica import Replica
from transport.updates import UpdateFormatError, document_digest

log = logging.getLogger("transport.mesh")

INLINE_SECONDS = 0.005
"""A digest that took longer than this is only sent when already cached (see `opening`)."""

SETTLE_SECONDS = 0.5
"""How long writes must pause before a costly digest is recomputed in the background."""


class DigestCache:
    """The digest of a replica's current state, computed off the event loop and cached until it changes."""

    def __init__(self, replica: Replica) -> None:
        self._replica = replica
        self.generation = 0
        """Counts changes of the replica; a cached digest is valid for one generation."""
        self._cached: tuple[int, bytes] | None = None
        self._cost = 0.0

    def changed(self) -> None:
        """The replica changed (callable from any thread): the cached digest is stale."""
        self.generation += 1

    def fresh(self) -> bytes | None:
        """The cached digest if it describes the current state, else None."""
        cached = self._cached
        return cached[1] if cached is not None and cached[0] == self.generation else None

    async def current(self) -> bytes | None:
        """Digest of the current state (cached until the next change); None if it cannot be computed."""
        generation = self.generation
        cached = self._cached
        if cached is not None and cached[0] == generation:
            return cached[1]
        try:
            digest, cost = await asyncio.to_thread(_timed_digest, self._replica)
        except UpdateFormatError as error:
            log.warning("event=digest_unavailable error=%s", json.dumps(str(error)))
            return None
        self._cost = cost
        self._cached = (generation, digest)
        return digest

    async def opening(self) -> bytes | None:
        """The digest to open a connection with, without making a big document's peers wait.

        Cheap digests are computed on the spot. A costly one is only used when cached for
        the current state, which `refresh_loop` keeps true once writes pause: the digest
        only pays off between peers that are already equal, that is, at rest. A peer that
        gets no digest is simply sent the ordinary diff.
        """
        fresh = self.fresh()
        if fresh is not None:
            return fresh
        if self._cost <= INLINE_SECONDS:
            return await self.current()
        return None

    async def refresh_loop(self) -> None:
        """Recompute the digest once writes have paused for `SETTLE_SECONDS` (runs until cancelled)."""
        seen = self.generation
        while True:
            await asyncio.sleep(SETTLE_SECONDS)
            current = self.generation
            if current == seen and self.fresh() is None:
                await self.current()
            seen = current


def _timed_digest(replica: Replica) -> tuple[bytes, float]:
    """The digest and the CPU time computing it took in the worker thread: waiting for a free
    thread, or for the GIL while the event loop is busy, is not the digest's cost (wall time
    once measured 160 ms for a 1 ms digest at start-up, and then it was never computed inline)."""
    started = time.thread_time()
    digest = document_digest(replica)
    return digest, time.thread_time() - started
