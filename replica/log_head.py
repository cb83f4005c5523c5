"""LogHead: the small shared file that makes one update log safe for many processes.

`log/HEAD` is one page, mapped shared by every process that has the directory open. Its
`flock` is the append lock; its words say where the log ends, so a reader learns that
another process appended by comparing one word with what it has applied. The layout is
in docs/storage.md ("Many processes, one directory").
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
from pathlib import Path
from types import TracebackType

HEAD_NAME = "HEAD"
HEAD_MAGIC = b"AGSTHEAD"
HEAD_VERSION = 2
HEAD_SIZE = 4096
_PREFIX = struct.Struct("<8sII")
_WORD = struct.Struct("<Q")
_SLOT = struct.Struct("<QQQ")
ACTIVE_AT = 16
SLOTS_AT = (24, 48)
DURABLE_AT = 72
TORN_AT = 80


class LogHead:
    """The mapped `log/HEAD` of one log in this process, and its cross-process append lock.

    The lock is reentrant within a thread (a depth count over a threading.RLock) and
    exclusive across threads and processes (flock on this process's own descriptor).
    """

    def __init__(self, path: Path, fd: int, mm: mmap.mmap) -> None:
        self.path = path
        self._fd = fd
        self._mm = mm
        self._thread_lock = threading.RLock()
        self._depth = 0

    @classmethod
    def open(cls, directory: Path, mode: int = 0o600) -> LogHead:
        """Open (creating if needed) and map `directory/HEAD`; an uninitialised head reads as invalid."""
        path = directory / HEAD_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        try:
            if os.fstat(fd).st_size < HEAD_SIZE:
                os.ftruncate(fd, HEAD_SIZE)
            mm = mmap.mmap(fd, HEAD_SIZE)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, mm)

    # -- the append lock ------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the append lock (blocks while another thread or process holds it)."""
        self._thread_lock.acquire()
        if self._depth == 0:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except BaseException:
                self._thread_lock.release()
                raise
        self._depth += 1

    def release(self) -> None:
        """Release one level of the append lock; the outermost release drops the flock."""
        self._depth -= 1
        if self._depth == 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()

    @property
    def held(self) -> bool:
        """True while this process holds the append lock (from any of its threads)."""
        return self._depth > 0

    def __enter__(self) -> LogHead:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    # -- the words ------------------------------------------------------------------------

    def valid(self) -> bool:
        """True once some process has written the head (magic and version match)."""
        magic, version, _ = _PREFIX.unpack_from(self._mm, 0)
        return magic == HEAD_MAGIC and version == HEAD_VERSION

    def _position(self) -> tuple[int, int, int]:
        """(last lsn, segment, end) of the active slot, read consistently without the lock.

        The writer fills the inactive slot and then flips the one-word index, so a reader
        that sees the same index before and after reading a slot read a whole position."""
        while True:
            active = _WORD.unpack_from(self._mm, ACTIVE_AT)[0] & 1
            position = _SLOT.unpack_from(self._mm, SLOTS_AT[active])
            if _WORD.unpack_from(self._mm, ACTIVE_AT)[0] & 1 == active:
                return int(position[0]), int(position[1]), int(position[2])

    @property
    def last_lsn(self) -> int:
        """The newest published record's lsn: the word every reader compares (no lock needed)."""
        active = _WORD.unpack_from(self._mm, ACTIVE_AT)[0] & 1
        return int(_WORD.unpack_from(self._mm, SLOTS_AT[active])[0])

    @property
    def segment(self) -> int:
        """First lsn (the name) of the segment being appended to."""
        return self._position()[1]

    @property
    def end(self) -> int:
        """Byte offset in that segment where the next record goes."""
        return self._position()[2]

    def position(self) -> tuple[int, int, int]:
        """(last lsn, segment, end), consistent, without the lock (a moment later it may have moved on)."""
        return self._position()

    @property
    def durable_lsn(self) -> int:
        """Every record up to this lsn has been fsynced by some process."""
        return int(_WORD.unpack_from(self._mm, DURABLE_AT)[0])

    @property
    def torn_records(self) -> int:
        """How many torn records of dead writers have been cut off since the head was written."""
        return int(_WORD.unpack_from(self._mm, TORN_AT)[0])

    def publish(self, segment: int, end: int, last_lsn: int) -> None:
        """Say where the log now ends (append lock held): fill the inactive slot, then flip the index.

        A writer killed before the flip leaves the old position published: the log ends
        where it did, and what it wrote past that end is a torn record for the next writer."""
        active = _WORD.unpack_from(self._mm, ACTIVE_AT)[0] & 1
        _SLOT.pack_into(self._mm, SLOTS_AT[1 - active], last_lsn, segment, end)
        _WORD.pack_into(self._mm, ACTIVE_AT, 1 - active)

    def note_durable(self, lsn: int) -> None:
        """Raise the durable lsn to `lsn`; safe without the lock (a racing lower store only costs an fsync)."""
        if lsn > self.durable_lsn:
            _WORD.pack_into(self._mm, DURABLE_AT, lsn)

    def note_torn(self) -> None:
        """Count one torn record cut off (append lock held)."""
        _WORD.pack_into(self._mm, TORN_AT, self.torn_records + 1)

    def initialise(self, segment: int, end: int, last_lsn: int, durable_lsn: int) -> None:
        """Write every word from a recovery scan (append lock held, no other process open)."""
        self._mm[: HEAD_SIZE] = bytes(HEAD_SIZE)
        _WORD.pack_into(self._mm, DURABLE_AT, durable_lsn)
        self.publish(segment, end, last_lsn)
        _PREFIX.pack_into(self._mm, 0, HEAD_MAGIC, HEAD_VERSION, 0)

    def close(self) -> None:
        """Unmap and close (the lock, if held, goes with the descriptor)."""
        self._mm.close()
        os.close(self._fd)
