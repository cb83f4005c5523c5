"""Awareness states known to one node: who is online and what they work on (y-protocols rules).

Each client id carries a JSON state and a clock; an entry is accepted when its clock is
newer, or equal with a null state (a removal). States not renewed within
`OUTDATED_TIMEOUT` are forgotten, as y-protocols does. This node's own entry is renewed
by the mesh well within that timeout, which also keeps y-websocket clients (which close a
socket silent for 30 s) connected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transport.messages import AwarenessEntry, decode_awareness_update, encode_awareness_update

PRESENCE_FIELDS = ("replica_id", "name", "agent", "working_on")
"""State fields `online()` repeats at the top level of each entry."""

OUTDATED_TIMEOUT = 30.0
"""Seconds after which a state that was not renewed is dropped (y-protocols outdatedTimeout)."""


@dataclass(slots=True)
class _Known:
    """What we know of one client."""

    clock: int
    state: Any
    updated: float
    via: str | None


class AwarenessTable:
    """Awareness states by client id, with the connection each was last learned from."""

    def __init__(
        self,
        client_id: int,
        local_state: dict[str, Any] | None,
        *,
        max_states: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client_id = client_id
        self.max_states = max_states
        self._clock = clock
        self._known: dict[int, _Known] = {}
        if local_state is not None:
            self._known[client_id] = _Known(1, local_state, clock(), None)

    @property
    def local_state(self) -> Any:
        """This node's own state (None once it has gone away)."""
        own = self._known.get(self.client_id)
        return own.state if own is not None else None

    def set_local(self, state: dict[str, Any] | None) -> bytes:
        """Replace this node's state (None = offline) and return the update to broadcast.

        Clocks start at 1: y-protocols ignores a client it has never seen at clock 0.
        """
        own = self._known.get(self.client_id)
        clock = own.clock + 1 if own is not None else 1
        self._known[self.client_id] = _Known(clock, state, self._clock(), None)
        return encode_awareness_update([AwarenessEntry(self.client_id, clock, state)])

    def renew_local(self) -> bytes | None:
        """Bump this node's clock with the same state; the update to broadcast, if online."""
        own = self._known.get(self.client_id)
        if own is None or own.state is None:
            return None
        return self.set_local(own.state)

    def apply(self, payload: bytes, via: str) -> bytes | None:
        """Merge a peer's (already validated) update; return the accepted entries to relay."""
        accepted = []
        now = self._clock()
        for entry in decode_awareness_update(payload):
            if entry.client_id == self.client_id:
                self._defend_own(entry.clock)
                continue
            known = self._known.get(entry.client_id)
            current = known.clock if known is not None else 0
            if not (
                current < entry.clock
                or (current == entry.clock and entry.state is None and known is not None and known.state is not None)
            ):
                continue
            if known is None and len(self._known) >= self.max_states:
                continue
            self._known[entry.client_id] = _Known(entry.clock, entry.state, now, via)
            accepted.append(entry)
        return encode_awareness_update(accepted) if accepted else None

    def _defend_own(self, clock: int) -> None:
        """A peer speaks for our client id: move our clock past it so our state wins."""
        own = self._known.get(self.client_id)
        if own is not None and clock >= own.clock:
            own.clock = clock

    def remove_via(self, via: str) -> bytes | None:
        """Mark every state last learned through connection `via` as gone; the update to relay."""
        removed = []
        for client_id, known in self._known.items():
            if known.via == via and known.state is not None:
                known.clock += 1
                known.state = None
                known.updated = self._clock()
                removed.append(AwarenessEntry(client_id, known.clock, None))
        return encode_awareness_update(removed) if removed else None

    def expire(self) -> int:
        """Forget remote states not renewed within OUTDATED_TIMEOUT and removals older than that."""
        deadline = self._clock() - OUTDATED_TIMEOUT
        stale = [cid for cid, known in self._known.items() if cid != self.client_id and known.updated < deadline]
        for client_id in stale:
            del self._known[client_id]
        return len(stale)

    def encode_all(self) -> bytes | None:
        """Every live state, as one update (what a new connection or a query receives)."""
        entries = [
            AwarenessEntry(client_id, known.clock, known.state)
            for client_id, known in self._known.items()
            if known.state is not None
        ]
        return encode_awareness_update(entries) if entries else None

    def online(self) -> list[dict[str, Any]]:
        """Live states for status: client id, state, seconds since renewal, where learned.

        The usual presence fields of the state (replica_id, name, agent, working_on) are
        repeated at the top level when they are strings, for tables.
        """
        now = self._clock()
        entries = []
        for client_id, known in self._known.items():
            if known.state is None:
                continue
            entry: dict[str, Any] = {
                "client_id": client_id,
                "state": known.state,
                "local": client_id == self.client_id,
                "age_seconds": round(now - known.updated, 3),
                "via": known.via,
            }
            if isinstance(known.state, dict):
                for key in PRESENCE_FIELDS:
                    if isinstance(known.state.get(key), str):
                        entry[key] = known.state[key]
            entries.append(entry)
        return entries
