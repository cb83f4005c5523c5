"""Helpers of the replica-backed compat tests: syncing replicas by hand, raw peer writes, fsync counting."""

from __future__ import annotations

from typing import Any, Dict, Iterable

from pycrdt import Map

from compat.versioned_store import ENTITIES_COLLECTION, META_KEY, stored_checksum
from replica import Replica


def replica_of(thing: Any) -> Replica:
    """The replica behind a store, manager or replica."""
    if isinstance(thing, Replica):
        return thing
    store = getattr(thing, "store", thing)
    return store.replica


def sync(*things: Any, rounds: int = 2) -> None:
    """Exchange state-vector diffs between every pair until all hold the same state (no network)."""
    replicas = [replica_of(t) for t in things]
    for _ in range(rounds):
        for source in replicas:
            for target in replicas:
                if source is not target:
                    target.apply_update(source.diff(target.state_vector()))
    vectors = {frozenset(_vector(r).items()) for r in replicas}
    assert len(vectors) == 1, "replicas did not converge"


def _vector(replica: Replica) -> Dict[int, int]:
    from replica.statevector import decode_state_vector

    return dict(decode_state_vector(replica.state_vector()))


def peer_write(replica: Replica, entity_id: str, data: Dict[str, Any], *, checksum: Any = "auto") -> None:
    """Write an entity record directly, as a peer (or junk) would, bypassing compat's checks."""
    body = dict(data)
    meta = {"checksum": stored_checksum(data) if checksum == "auto" else checksum, "tx": None, "gv": 0}
    body[META_KEY] = meta
    records = replica.collection(ENTITIES_COLLECTION)
    with replica.transaction():
        records.put(entity_id, body)


def raw_junk(replica: Replica, entity_id: str, value: Any) -> None:
    """Put a non-record value under an entity id in the Doc (what a broken peer could send)."""
    with replica.transaction():
        replica.doc.get(ENTITIES_COLLECTION, type=Map)[entity_id] = value


def ids(items: Iterable[Any]) -> list:
    """The conflict ids of recorded conflicts, sorted."""
    return sorted(c.conflict_id for c in items)
