"""DocAccess: the one narrow way the replica's collections reach its Doc.

A collection (tasks, graph, counters, lessons, records) reads inside `read()` (which first
applies what other processes appended to the shared log; `snapshot()` for several reads
that share one Doc transaction) and writes inside `write()` (one
Doc transaction, one log record, appended under the log's cross-process lock). It never
touches the replica's locks or log itself, so the replica may change how it serialises
and persists without touching them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ContextManager

from pycrdt import Doc

if TYPE_CHECKING:
    from .replica import Replica


class DocAccess:
    """What a collection may do with its replica: fresh reads, write scopes, and who is writing."""

    __slots__ = ("_replica",)

    def __init__(self, replica: Replica) -> None:
        self._replica = replica

    @property
    def doc(self) -> Doc:
        """The Doc (use only inside `read()` or `write()`)."""
        return self._replica.doc

    @property
    def replica_id(self) -> str:
        """The directory's stable replica name (shared by every process on it)."""
        return self._replica.replica_id

    @property
    def client_id(self) -> int:
        """This process's Yjs client id (fresh at every open: a writer identity of its own)."""
        return self._replica.doc.client_id

    def read(self) -> ContextManager[None]:
        """A consistent, fresh view: every write any local process acknowledged before it began."""
        return self._replica._read_scope()

    def snapshot(self) -> ContextManager[None]:
        """Like `read()`, for several reads: they share one Doc transaction and see one state (no writes inside)."""
        return self._replica._snapshot_scope()

    def write(self) -> ContextManager[None]:
        """A scope whose writes are (part of) one Doc transaction and one log record."""
        return self._replica._write()

    def origin_is_remote(self) -> bool:
        """True while the transaction being applied came from a peer or another local process."""
        return self._replica._origin is not None

    def keep_subscription(self, subscription: Any) -> Any:
        """Hold a yrs subscription until the replica closes."""
        return self._replica.keep_subscription(subscription)
