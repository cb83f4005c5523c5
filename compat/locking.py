"""Cross-process exclusive lock on a file, the ``cortical.utils.locking.ProcessLock``.

The lock is a POSIX ``flock`` on ``lock_path``. The holder writes its pid and
acquire time into the file so that a lock left behind by a dead process (for
example one whose descriptor survives in an orphaned child) can be detected as
stale and taken over: the file is replaced by a new inode and locked afresh.

``os.kill`` and friends are always called through the ``os`` module at call
time, because tests patch ``<module>.os.kill``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Optional, Type, Union

INITIAL_BACKOFF = 0.01
"""First sleep between attempts of a timed acquire, in seconds."""

MAX_BACKOFF = 0.5
"""Cap of the doubling sleep between attempts, in seconds."""

STALE_RECHECK_DELAY = 0.02
"""Pause before a stale verdict is acted on, so a holder that has just locked the
file has time to write its pid (it does so right after ``flock``)."""

_CONTENDED = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES)


class ProcessLock:
    """Exclusive cross-process lock on ``lock_path`` with timeouts, reentrancy and stale-lock recovery.

    Reentrancy is counted per instance; two instances on one path exclude each other even in one process.
    """

    def __init__(self, lock_path: Union[str, Path], reentrant: bool = True, stale_timeout: float = 3600.0) -> None:
        self.lock_path: Path = Path(lock_path)
        self.reentrant: bool = reentrant
        self.stale_timeout: float = stale_timeout
        self._fd: Optional[int] = None
        self._lock_count: int = 0
        self._owner_pid: Optional[int] = None
        self._mutex = threading.Lock()

    # ------------------------------------------------------------------ API

    def acquire(self, timeout: Optional[float] = None) -> bool:
        """Take the lock: one try when ``timeout`` is None, else retry with backoff until it elapses.

        Returns True on success, False otherwise; errors are never raised."""
        start = time.monotonic()
        delay = INITIAL_BACKOFF
        while True:
            try:
                with self._mutex:
                    self._forget_if_forked()
                    if self._fd is not None:
                        if not self.reentrant:
                            return False
                        self._lock_count += 1
                        return True
                    if self._attempt():
                        return True
            except Exception:
                return False
            if timeout is None:
                return False
            remaining = timeout - (time.monotonic() - start)
            if remaining <= 0:
                return False
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, MAX_BACKOFF)

    def release(self) -> None:
        """Undo one acquire; the last release unlocks and closes the file (which stays on disk)."""
        with self._mutex:
            self._forget_if_forked()
            if self._fd is None:
                return
            if self._lock_count > 1:
                self._lock_count -= 1
                return
            fd = self._fd
            self._fd = None
            self._lock_count = 0
            self._owner_pid = None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            except OSError:
                pass
            _close_quietly(fd)

    def is_locked(self) -> bool:
        """True while this instance holds the lock."""
        with self._mutex:
            self._forget_if_forked()
            return self._fd is not None

    def __enter__(self) -> "ProcessLock":
        if not self.acquire():
            raise RuntimeError(f"Failed to acquire lock: {self.lock_path}")
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.release()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None and getattr(self, "_owner_pid", None) == os.getpid():
            _close_quietly(fd)

    def __repr__(self) -> str:
        return f"ProcessLock({str(self.lock_path)!r}, held={self._fd is not None}, count={self._lock_count})"

    # ---------------------------------------------------------- stale check

    def _is_stale_lock(self) -> bool:
        """True when the lock file names no live holder: empty, not JSON, no pid, too old, or a dead pid.

        A missing file, any other error, or a live pid (ours included) means not stale."""
        try:
            with open(self.lock_path, "r", encoding="utf-8", errors="replace") as handle:
                text = handle.read()
            if not text.strip():
                return True
            try:
                info: Any = json.loads(text)
            except ValueError:
                return True
            if not isinstance(info, dict) or info.get("pid") is None:
                return True
            acquired_at = info.get("acquired_at") or 0
            if acquired_at and time.time() - float(acquired_at) > self.stale_timeout:
                return True
            try:
                os.kill(int(info["pid"]), 0)
            except PermissionError:
                return False
            except OSError:
                return True
            return False
        except FileNotFoundError:
            return False
        except Exception:
            return False

    # ------------------------------------------------------------ internals

    def _attempt(self) -> bool:
        """One acquisition attempt, with stale-lock recovery when someone holds the file."""
        fd = self._open_locked()
        if fd is not None:
            self._take(fd)
            return True
        if self._held_shared() or not self._is_stale_lock():
            return False
        return self._recover_stale()

    def _held_shared(self) -> bool:
        """True when the file is held by shared holders only (commits of a transaction manager, which write
        no pid): they are live by definition, so the file must not be taken for stale."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except OSError:
            return False
        finally:
            _close_quietly(fd)

    def _open_locked(self) -> Optional[int]:
        """Open ``lock_path`` and ``flock`` it without blocking; the locked fd, or None when held elsewhere."""
        # After locking, the path must still name the locked inode: a file replaced
        # meanwhile (stale recovery elsewhere) is retried on the new one.
        for _ in range(8):
            fd = _open_lock_file(self.lock_path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                _close_quietly(fd)
                if exc.errno in _CONTENDED:
                    return None
                raise
            if self._names_inode(fd):
                return fd
            _close_quietly(fd)
        return None

    def _names_inode(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.lock_path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)

    def _take(self, fd: int) -> None:
        """Record ownership of the locked ``fd`` and write the holder info (flushed, not fsynced)."""
        payload = json.dumps({"pid": os.getpid(), "acquired_at": time.time()}).encode("utf-8")
        try:
            os.pwrite(fd, payload, 0)
            os.ftruncate(fd, len(payload))
        except OSError:
            pass
        self._fd = fd
        self._lock_count = 1
        self._owner_pid = os.getpid()

    def _recover_stale(self) -> bool:
        """Replace a stale lock file by a new inode and lock that, serialised by a guard lock."""
        # The verdict is confirmed after a short pause on the same inode, so a holder
        # that has just locked the file (and not yet written its pid) is not taken for dead.
        guard = _GuardLock(self.lock_path.with_name(self.lock_path.name + ".guard"))
        if not guard.try_lock():
            return False
        try:
            examined = _inode_of(self.lock_path)
            time.sleep(STALE_RECHECK_DELAY)
            fd = self._open_locked()
            if fd is not None:
                self._take(fd)
                return True
            if examined is None or _inode_of(self.lock_path) != examined or not self._is_stale_lock():
                return False
            try:
                self.lock_path.unlink()
            except FileNotFoundError:
                pass
            fd = self._open_locked()
            if fd is None:
                return False
            self._take(fd)
            return True
        finally:
            guard.unlock()

    def _forget_if_forked(self) -> None:
        """In a forked child, drop the inherited handle without unlocking the parent's lock."""
        if self._fd is not None and self._owner_pid != os.getpid():
            _close_quietly(self._fd)
            self._fd = None
            self._lock_count = 0
            self._owner_pid = None


class _GuardLock:
    """A plain non-blocking ``flock`` on a side file that serialises stale-lock recovery."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: Optional[int] = None

    def try_lock(self) -> bool:
        """Take the guard without blocking; False when another recovery holds it."""
        fd = _open_lock_file(self._path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            _close_quietly(fd)
            return False
        self._fd = fd
        return True

    def unlock(self) -> None:
        """Release the guard (the side file stays)."""
        if self._fd is not None:
            _close_quietly(self._fd)
            self._fd = None


def _open_lock_file(path: Path) -> int:
    """Open (creating it and its parent directories if needed) a lock file for reading and writing."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o644)


def _inode_of(path: Path) -> Optional[tuple[int, int]]:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_dev, info.st_ino)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


__all__ = ["ProcessLock"]
