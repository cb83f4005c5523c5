"""A peer's update into the replica: integrity check, an optional store-first hook, apply, defer.

One `UpdateIntake` per Mesh (a hub has one per room). It owns the rules of docs/protocol.md
"Applying a peer's update": malformed bytes are refused with 4400, the part of an update
that cannot integrate yet is cut off and asked for again, a hub's durable stream stores an
update before it is applied and relayed, and every apply is timed for the metrics. What a
refusal does to the connection (log, count, close) is the owner's: `reject` and `close`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from replica.errors import ClosedError, InvalidUpdateError, ReplicaError
from replica.replica import Replica
from replica.statevector import decode_state_vector
from transport import closecodes
from transport.limits import Limits
from transport.peer import PeerConnection
from transport.updates import UpdateFormatError, integrable_part

log = logging.getLogger(__name__)

StoreHook = Callable[[bytes], Awaitable[None]]
"""Stores a checked update durably before it is applied (a hub's Redis stream); raises if it cannot."""


Reject = Callable[[PeerConnection, int, str, str], None]
"""Refuse a peer's input (connection, close code, reason, detail): log it at a bounded rate, count it, close."""
Close = Callable[[PeerConnection, int, str], None]
"""Close a connection with a code (once) without counting it as bad input (connection, code, why)."""


def is_panic(error: BaseException) -> bool:
    """Whether `error` is pycrdt's PanicException (a Rust panic surfaced as a BaseException)."""
    return type(error).__name__ == "PanicException"


class UpdateIntake:
    """Applies peers' updates to one replica (see module docstring)."""

    def __init__(self, replica: Replica, limits: Limits, *, reject: Reject, close: Close,
                 store: StoreHook | None = None) -> None:
        self.replica = replica
        self.limits = limits
        self._reject = reject
        self._close = close
        self.store = store
        self.apply_observer: Callable[[float], None] | None = None
        """Called with each apply's duration in seconds (the metrics' histogram), or None."""

    @property
    def stores_first(self) -> bool:
        """True when updates go to a durable store before they are applied (an async path)."""
        return self.store is not None

    def check(self, conn: PeerConnection, update: bytes, before: Mapping[int, int]) -> tuple[bytes, str | None] | None:
        """The integrable part of a peer's update and why the rest waits; None once refused.

        Updates up to `limits.integrity_check_bytes` are parsed first: malformed ones are
        refused (pycrdt would integrate a prefix of them and ignore the rest), and the part
        that cannot integrate at once is cut off and asked for again (`defer`).
        """
        if len(update) > self.limits.integrity_check_bytes:
            return update, None
        try:
            return integrable_part(update, before)
        except UpdateFormatError as error:
            self._reject(conn, closecodes.PROTOCOL_ERROR, "invalid_update", f"malformed update: {error}")
        except Exception as error:
            log.exception("event=integrity_check_failed peer=%s bytes=%d", conn.name, len(update))
            self._reject(conn, closecodes.PROTOCOL_ERROR, "invalid_update", f"update could not be checked: {error}")
        return None

    def apply(self, conn: PeerConnection, update: bytes) -> bool:
        """Check and apply a peer's update with the peer as origin; False once the connection is refused."""
        before = decode_state_vector(self.replica.state_vector())
        checked = self.check(conn, update, before)
        if checked is None:
            return False
        return self._apply_checked(conn, checked[0], checked[1], before)

    async def store_then_apply(self, conn: PeerConnection, update: bytes) -> bool:
        """Check, store (the hook), then apply and relay; a store failure closes with 1013.

        Only what passed the check is stored; the client, told to try again later, resends
        instead of believing its update was kept.
        """
        assert self.store is not None
        before = decode_state_vector(self.replica.state_vector())
        checked = self.check(conn, update, before)
        if checked is None:
            return False
        part, problem = checked
        try:
            await self.store(part)
        except Exception as error:
            log.warning("event=store_failed peer=%s error=%s", conn.name, json.dumps(str(error)[:200]))
            self._close(conn, closecodes.TRY_AGAIN_LATER, "storage unavailable")
            return False
        return self._apply_checked(conn, part, problem, before)

    def _apply_checked(self, conn: PeerConnection, update: bytes, problem: str | None,
                       before: Mapping[int, int]) -> bool:
        """Apply an update that passed `check`; defer what could not integrate yet."""
        started = time.perf_counter()
        try:
            changed = self.replica.apply_update(update, origin=conn.origin)
        except InvalidUpdateError as error:
            self._reject(conn, closecodes.PROTOCOL_ERROR, "invalid_update", str(error))
            return False
        except ClosedError:
            self._close(conn, closecodes.GOING_AWAY, "replica closed")
            return False
        except ReplicaError:
            log.exception("event=apply_failed peer=%s", conn.name)
            self._close(conn, closecodes.INTERNAL_ERROR, "apply failed")
            return False
        except BaseException as error:
            if not is_panic(error):
                raise
            self._reject(conn, closecodes.PROTOCOL_ERROR, "invalid_update", f"pycrdt panicked: {error}")
            return False
        conn.counters["updates_applied" if changed else "updates_redundant"] += 1
        if self.apply_observer is not None:
            self.apply_observer(time.perf_counter() - started)
        if changed:
            conn.note_received(before, self.replica.state_vector())
        if problem is not None:
            self.defer(conn, problem)
        return True

    def defer(self, conn: PeerConnection, problem: str) -> None:
        """Part of an update could not integrate yet: ask the peer for everything we lack.

        Before the peer's first step 2 nothing is asked: that step 2 is computed after the
        update was written, so it carries it. At most one such step 1 is outstanding.
        """
        conn.counters["updates_deferred"] += 1
        log.info("event=deferred peer=%s reason=%s", conn.name, json.dumps(problem[:200]))
        if conn.synced_at is not None and not conn.repair_requested:
            conn.repair_requested = True
            conn.counters["repairs_requested"] += 1
            conn.queue_frame(conn.session.send_step1(self.replica.state_vector()))
