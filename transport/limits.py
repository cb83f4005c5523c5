"""Resource limits of the mesh: frame size, connections, rates, send queues, reconnect pacing.

Every number a peer could push this node past lives in `Limits`, so that an exposed
server is tuned in one place; `TokenBucket` and `RateLimiter` enforce the per-peer rates
and `Backoff` paces reconnects.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

MiB = 1024 * 1024

FRAME_OVERHEAD = 16
"""Bytes a sync message adds around its update (types and length), rounded up."""


@dataclass(frozen=True)
class Limits:
    """Per-node and per-peer bounds; the defaults suit a trusted LAN, lower them when exposed."""

    max_frame_size: int = 64 * MiB
    """Largest frame accepted or sent; bigger catch-ups are split. Peers should agree on it."""
    max_connections: int = 64
    """Inbound connections served at once; the next one is closed with 1013."""
    messages_per_second: float = 2000.0
    """Sustained frames per second a peer may send."""
    message_burst: float = 20000.0
    """Frames a peer may send in a burst above the sustained rate."""
    bytes_per_second: float = 64.0 * MiB
    """Sustained bytes per second a peer may send."""
    byte_burst: float | None = None
    """Bytes a peer may send in a burst; at least four maximal frames, since a peer's whole
    catch-up (its step 2) arrives as one burst and must pass."""
    send_queue_messages: int = 4096
    """Items queued for one peer before it counts as too far behind and gets resynced."""
    send_queue_bytes: int = 16 * MiB
    """Bytes queued for one peer before it counts as too far behind and gets resynced."""
    batch_bytes: int = 1 * MiB
    """Most bytes of queued updates merged into one update frame."""
    read_only_strikes: int = 100
    """Refused writes from a read-only peer before it is closed with 4403."""
    max_awareness_states: int = 10000
    """Awareness client ids remembered; updates about more are ignored."""
    integrity_check_bytes: int = 1 * MiB
    """Received updates up to this size are cut to what integrates at once (no pending
    structs); about 45 us for a typical 200-byte update. 0 turns the check off."""

    def __post_init__(self) -> None:
        if self.max_frame_size < 1024:
            raise ValueError(f"max_frame_size must be at least 1024 bytes, got {self.max_frame_size}")
        for name in ("max_connections", "send_queue_messages", "send_queue_bytes", "batch_bytes",
                     "read_only_strikes", "max_awareness_states"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.integrity_check_bytes < 0:
            raise ValueError("integrity_check_bytes must not be negative")
        for name in ("messages_per_second", "message_burst", "bytes_per_second"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def effective_byte_burst(self) -> float:
        """The byte burst, never below four maximal frames (else a catch-up could never pass)."""
        floor = 4.0 * self.max_frame_size
        return max(self.byte_burst, floor) if self.byte_burst is not None else floor

    @property
    def max_update_size(self) -> int:
        """Largest update carried in one frame."""
        return self.max_frame_size - FRAME_OVERHEAD


class TokenBucket:
    """Classic token bucket: `rate` tokens per second refill up to `burst`."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()

    def take(self, amount: float) -> bool:
        """Spend `amount` tokens if available; False (and nothing spent) otherwise."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if amount > self._tokens:
            return False
        self._tokens -= amount
        return True


class RateLimiter:
    """Per-peer limits on frames per second and bytes per second."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self._messages = TokenBucket(limits.messages_per_second, limits.message_burst, clock)
        self._bytes = TokenBucket(limits.bytes_per_second, limits.effective_byte_burst, clock)

    def admit(self, size: int) -> str | None:
        """None if a frame of `size` bytes is within the limits, else which limit it broke."""
        if not self._messages.take(1):
            return "messages per second"
        if not self._bytes.take(size):
            return "bytes per second"
        return None


@dataclass(frozen=True)
class ReconnectPolicy:
    """Exponential backoff with jitter between dial attempts, bounded by `maximum`."""

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.5
    """Fraction of each delay drawn at random, so that peers restarted together spread out."""

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("need 0 < initial <= maximum")
        if self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("need factor >= 1 and 0 <= jitter <= 1")


class Backoff:
    """The delays of one dialer: grows by `factor` per failure, reset after a good connection."""

    def __init__(self, policy: ReconnectPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng or random.Random()
        self._next = policy.initial

    def next_delay(self) -> float:
        """The delay before the next attempt (jittered), then grow the base."""
        base = self._next
        self._next = min(self.policy.maximum, base * self.policy.factor)
        return base * (1 - self.policy.jitter * self._rng.random())

    def longest(self) -> float:
        """The maximum delay (jittered), for refusals that a quick retry would not fix."""
        return self.policy.maximum * (1 - self.policy.jitter * self._rng.random())

    def reset(self) -> None:
        """Start again from the initial delay."""
        self._next = self.policy.initial
