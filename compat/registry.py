"""Reference-counted registries of per-directory resources that never deadlock a finalizer.

A compat object dropped without ``close()`` is cleaned up by ``weakref.finalize``, and the
garbage collector runs finalizers at any allocation, on any thread, possibly while that very
thread (or the one the finalizing thread waits for) holds the registry's lock. So the rules:

* a finalizer only calls :meth:`RefCountedRegistry.release_later`, which appends to a
  ``collections.deque`` (atomic, lock-free) and returns;
* the registry settles dropped users at its next ordinary call and at interpreter exit;
* the registry's lock guards dictionary updates only: opening, closing, resolving paths,
  file I/O and starting threads all happen outside it (an entry being opened or closed is
  marked, and other callers for that key wait on the entry's event, not on the lock).
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Generic, Hashable, List, Optional, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

log = logging.getLogger(__name__)

_OPENING = "opening"
_OPEN = "open"
_CLOSING = "closing"


@dataclass(eq=False)
class Entry(Generic[K, V]):
    """One resource in a registry: its key, its value once open, and how many users hold it."""

    key: K
    value: Optional[V] = None
    users: int = 0
    state: str = _OPENING
    settled: threading.Event = field(default_factory=threading.Event)


class RefCountedRegistry(Generic[K, V]):
    """Resources opened once per key, shared by every user, closed when the last user leaves."""

    def __init__(self, name: str, close: Callable[[V], None]) -> None:
        self.name = name
        self._close = close
        self._lock = threading.Lock()
        self._entries: Dict[K, Entry[K, V]] = {}
        self._dropped: Deque[Entry[K, V]] = deque()
        _REGISTRIES.add(self)

    def acquire(self, key: K, open_value: Callable[[], V]) -> Entry[K, V]:
        """Join the resource of ``key``, opening it with ``open_value()`` (outside the lock) if needed."""
        self.settle()
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is None:
                    entry = self._entries[key] = Entry(key)
                    break
                if entry.state == _OPEN:
                    entry.users += 1
                    return entry
                waiting = entry.settled
            waiting.wait()
        try:
            value = open_value()
        except BaseException:
            with self._lock:
                del self._entries[key]
            entry.settled.set()
            raise
        with self._lock:
            entry.value, entry.users, entry.state = value, 1, _OPEN
        entry.settled.set()
        return entry

    def release(self, entry: Entry[K, V]) -> None:
        """Count one user less; the last one closes the resource (outside the lock)."""
        self._release_one(entry)
        self.settle()

    def release_later(self, entry: Entry[K, V]) -> None:
        """Safe from a finalizer or signal handler: takes no lock, does no I/O; settled later."""
        self._dropped.append(entry)

    def settle(self) -> None:
        """Release every user dropped by a finalizer since the last call."""
        while True:
            try:
                entry = self._dropped.popleft()
            except IndexError:
                return
            self._release_one(entry)

    def _release_one(self, entry: Entry[K, V]) -> None:
        with self._lock:
            entry.users -= 1
            if entry.users > 0 or entry.state != _OPEN:
                return
            entry.state = _CLOSING
            entry.settled = threading.Event()
        try:
            if entry.value is not None:
                self._close(entry.value)
        except Exception:
            log.exception("closing %s of %r failed", self.name, entry.key)
        finally:
            with self._lock:
                if self._entries.get(entry.key) is entry:
                    del self._entries[entry.key]
            entry.settled.set()

    def get(self, key: K) -> Optional[V]:
        """The open resource of ``key``, or None (after settling dropped users)."""
        self.settle()
        with self._lock:
            entry = self._entries.get(key)
            return entry.value if entry is not None and entry.state == _OPEN else None

    def keys(self) -> List[K]:
        """The keys whose resource is open (after settling dropped users)."""
        self.settle()
        with self._lock:
            return [key for key, entry in self._entries.items() if entry.state == _OPEN]

    def close_all(self) -> None:
        """Settle dropped users, then close every resource still open (interpreter exit)."""
        self.settle()
        with self._lock:
            entries = [entry for entry in self._entries.values() if entry.state == _OPEN]
        for entry in entries:
            with self._lock:
                entry.users = 1
            self._release_one(entry)


class OnceMap(Generic[K, V]):
    """One value per live key object, built once outside any lock (keys held weakly)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: "weakref.WeakKeyDictionary[K, V]" = weakref.WeakKeyDictionary()
        self._building: Dict[int, threading.Event] = {}

    def get(self, key: K, build: Callable[[], V]) -> V:
        """The value of ``key``, calling ``build()`` the first time (other callers wait for it)."""
        while True:
            with self._lock:
                found = self._values.get(key)
                if found is not None:
                    return found
                waiting = self._building.get(id(key))
                if waiting is None:
                    mine = self._building[id(key)] = threading.Event()
                    break
            waiting.wait()
        try:
            value = build()
            with self._lock:
                self._values[key] = value
            return value
        finally:
            with self._lock:
                del self._building[id(key)]
            mine.set()


_REGISTRIES: "weakref.WeakSet[RefCountedRegistry[object, object]]" = weakref.WeakSet()


def _close_everything() -> None:
    for registry in list(_REGISTRIES):
        registry.close_all()


atexit.register(_close_everything)
