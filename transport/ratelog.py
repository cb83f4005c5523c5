"""Log at a bounded rate: at most N lines per interval per key, then one "suppressed N" line.

Bad input arrives as fast as a peer can send it; one WARNING per rejected frame turned
3,000 fuzzed frames into 3,000 lines. The counts are kept elsewhere (metrics, status);
the log only needs enough lines to show what happens, and how many it left out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_LINES = 10
"""Lines per key per interval."""
DEFAULT_INTERVAL = 60.0
"""Seconds of one interval."""
MAX_KEYS = 256
"""Keys remembered at once; the stalest is reported and forgotten beyond this."""


@dataclass
class _Window:
    """One key's interval: when it began, lines written in it, lines left out."""

    started: float
    written: int = 0
    suppressed: int = 0


class RateLimitedLog:
    """A logger wrapper: `log(level, key, message, *args)` writes, or counts the line as suppressed.

    When a key's interval ends, the next line under any key first reports how many of its
    lines were left out (`event=suppressed key=K count=N seconds=S`); `flush()` reports
    every pending count at once (call it at shutdown). Thread-safe.
    """

    def __init__(self, logger: logging.Logger, *, lines: int = DEFAULT_LINES, interval: float = DEFAULT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS) -> None:
        if lines < 1 or interval <= 0 or max_keys < 1:
            raise ValueError("lines and max_keys must be at least 1 and interval positive")
        self.logger = logger
        self.lines = lines
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()
        self.suppressed_total = 0
        """Lines left out since creation (for metrics and tests)."""

    def log(self, level: int, key: str, message: str, *args: object) -> bool:
        """Write the line unless `key` used up its interval; True when written."""
        now = self._clock()
        with self._lock:
            reports = self._expired(now)
            window = self._windows.get(key)
            if window is None:
                if len(self._windows) >= self.max_keys:
                    stalest = min(self._windows, key=lambda k: self._windows[k].started)
                    reports.append((stalest, self._windows.pop(stalest), now))
                window = self._windows[key] = _Window(now)
            write = window.written < self.lines
            if write:
                window.written += 1
            else:
                window.suppressed += 1
                self.suppressed_total += 1
        for stale_key, stale, ended in reports:
            self._report(stale_key, stale, ended)
        if write:
            self.logger.log(level, message, *args)
        return write

    def warning(self, key: str, message: str, *args: object) -> bool:
        """`log` at WARNING."""
        return self.log(logging.WARNING, key, message, *args)

    def flush(self) -> None:
        """Report every key's pending suppressed count now, and start afresh."""
        now = self._clock()
        with self._lock:
            windows, self._windows = self._windows, {}
        for key, window in windows.items():
            self._report(key, window, now)

    def _expired(self, now: float) -> list[tuple[str, _Window, float]]:
        """Remove the windows whose interval ended; return them to report (lock held)."""
        ended = [key for key, window in self._windows.items() if now - window.started >= self.interval]
        return [(key, self._windows.pop(key), now) for key in ended]

    def _report(self, key: str, window: _Window, now: float) -> None:
        """The one line that says how many lines of `key` were left out, if any."""
        if window.suppressed:
            self.logger.warning("event=suppressed key=%s count=%d seconds=%.1f",
                                key, window.suppressed, max(0.0, now - window.started))
