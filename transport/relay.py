"""Relaying without flooding: which neighbours need not be sent an update a peer sent us.

Every agentstate node advertises, in its own awareness state under `links`, the replica
ids it has a live connection to. A node N that applies an update received from its
neighbour P does not relay it to a neighbour Q when both P says it is connected to Q and
Q says it is connected to P (each as last heard on N's direct connection to it): P sends
everything it holds to every live neighbour (its step 2 at the opening, every later change
as it happens), so Q gets it from P. When a node loses a link it advertises its new links
and then sends a step 1 to every agentstate neighbour, on the same connections and in
that order, which repairs whatever the rule skipped. docs/protocol.md, "Relaying", gives
the failure argument.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from transport.messages import decode_awareness_update
from transport.wire import ProtocolError

LINKS_KEY = "links"
"""Key of the awareness state under which a node lists the replica ids it is connected to."""


@dataclass(slots=True)
class AdvertisedLinks:
    """What one direct neighbour last said about its own links (None: nothing known yet)."""

    links: frozenset[str] | None = None
    client_id: int | None = None
    clock: int = 0

    def learn(self, payload: bytes, replica_id: str | None) -> None:
        """Take the neighbour's links from an awareness update it sent us on its own connection.

        Only the entry whose state names the neighbour's replica id counts, and only when
        newer than what we hold; a null state for that entry means nothing is known.
        """
        if replica_id is None:
            return
        try:
            entries = decode_awareness_update(payload)
        except ProtocolError:
            return
        for entry in entries:
            state = entry.state
            if entry.client_id == self.client_id and entry.clock >= self.clock and state is None:
                self.links, self.clock = None, entry.clock
                continue
            if not isinstance(state, dict) or state.get("replica_id") != replica_id:
                continue
            if entry.client_id == self.client_id and entry.clock <= self.clock:
                continue
            links = state.get(LINKS_KEY)
            valid = isinstance(links, list) and all(isinstance(item, str) for item in links)
            self.links = frozenset(links) if valid else None
            self.client_id, self.clock = entry.client_id, entry.clock


class Neighbour(Protocol):
    """What the rule reads of a connection."""

    peer_replica_id: str | None
    links: AdvertisedLinks


def reaches_directly(source: Neighbour, target: Neighbour) -> bool:
    """True when `target` gets from `source` whatever `source` sent us: both say they are linked."""
    source_links, target_links = source.links.links, target.links.links
    return (
        source_links is not None
        and target_links is not None
        and target.peer_replica_id is not None
        and source.peer_replica_id is not None
        and target.peer_replica_id in source_links
        and source.peer_replica_id in target_links
    )


def live_links(connections: Iterable[Neighbour]) -> tuple[str, ...]:
    """Sorted replica ids of the agentstate neighbours among `connections`."""
    return tuple(sorted({conn.peer_replica_id for conn in connections if conn.peer_replica_id is not None}))
