"""Transaction manager of the old ``cortical.got`` API: snapshot reads, optimistic commits.

Within a replica it behaves as before: a transaction reads at the snapshot version it
began with, buffers its writes, and commits only if nothing it read changed meanwhile
(a version conflict is *returned*, never raised). A commit is one replica transaction,
made durable after the locks are released so that concurrent commits share one fsync.

Across replicas there is no global lock: two replicas that commit to the same entity
without having seen each other keep both writes, and once synced every replica records
the same conflict (see :meth:`compat.conflict.ConflictResolver.recorded_conflicts`). For
that, each read remembers the entity's write clock, which the commit passes on as the
base its write was made on.

``os`` is imported at module level on purpose: tests patch ``compat.tx_manager.os.kill``
and the lock's liveness check must see it.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import ContextManager, Dict, List, Optional, Sequence, Tuple, Union

from compat.config import DurabilityMode
from compat.errors import TransactionError
from compat.locking import ProcessLock
from compat.managed_wal import ManagedWAL
from compat.recovery import RecoveryManager, RecoveryResult
from compat.transaction import Transaction, TransactionState, generate_transaction_id
from compat.types import Entity, utc_now_iso
from compat.versioned_store import BoardSeen, VersionedStore
from replica import Durability, Replica
from replica.records import Clock

LOCK_FILE_NAME = ".got.lock"
DEFAULT_LOCK_TIMEOUT = 30.0
"""Seconds a commit waits for ``.got.lock`` before raising RuntimeError (the old code tried once)."""


@dataclass
class Conflict:
    """A version conflict found at commit: the entity changed since the transaction read it."""

    entity_id: str
    expected_version: int
    actual_version: int
    conflict_type: str
    message: str


@dataclass
class CommitResult:
    """Outcome of a commit: success and the new global version, or the conflicts and reason."""

    success: bool
    version: Optional[int] = None
    conflicts: List[Conflict] = field(default_factory=list)
    reason: Optional[str] = None


class _CommitGate:
    """A commit's hold on ``.got.lock``: shared, so commits exclude an explicit holder, not each other.

    Commits from every process serialise on the replica log's append lock (which blocks in
    the kernel and checks versions after catching up), so ``.got.lock`` only has to keep
    them out while someone holds the ProcessLock itself, as the old system did. When this
    manager's own lock is held by the caller, the commit goes ahead (reentrancy)."""

    def __init__(self, fd: Optional[int]) -> None:
        self._fd = fd

    @classmethod
    def enter(cls, lock: ProcessLock, timeout: float) -> "_CommitGate":
        """Hold ``.got.lock`` shared, waiting up to ``timeout`` for an explicit holder; RuntimeError after that."""
        if lock.is_locked():
            return cls(None)
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            fd = os.open(lock.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return cls(fd)
            except BlockingIOError:
                os.close(fd)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"Failed to acquire lock: {lock.lock_path}")
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)

    def leave(self) -> None:
        """Release the shared hold."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class TransactionManager:
    """Begin, read, write, commit and roll back transactions on a got directory.

    The directory holds the replica (``replica.json``, ``LOCK``, ``log/``, ``snapshots/``)
    beside ``wal/`` and ``.got.lock``; ``store`` is a VersionedStore on ``got_dir/entities``
    over that replica. ``peers``/``listen``/``token``/``room`` (else ``agentstate.json``
    in the directory, else ``AGENTSTATE_PEERS``/``_LISTEN``/``_TOKEN``/``_ROOM``) make it
    sync with other agents. Close it (or use it as a context manager) when done."""

    def __init__(
        self,
        got_dir: Union[str, Path],
        durability: DurabilityMode = DurabilityMode.BALANCED,
        *,
        peers: Optional[Union[Sequence[str], str]] = None,
        listen: Optional[str] = None,
        token: Optional[str] = None,
        room: Optional[str] = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        self.got_dir: Path = Path(got_dir)
        self.got_dir.mkdir(parents=True, exist_ok=True)
        self.durability: DurabilityMode = DurabilityMode(durability)
        self.lock_timeout = lock_timeout
        self.store: VersionedStore = VersionedStore(
            self.got_dir / "entities",
            self.durability,
            replica_dir=self.got_dir,
            peers=peers,
            listen=listen,
            token=token,
            room=room,
        )
        try:
            self.wal: ManagedWAL = ManagedWAL(self.got_dir / "wal", self.durability)
        except BaseException:
            self.store.close()
            raise
        self.lock: ProcessLock = ProcessLock(self.got_dir / LOCK_FILE_NAME, reentrant=True)
        self._bases: Dict[str, Dict[str, Tuple[Clock, Optional[int], BoardSeen]]] = {}
        self._bases_lock = threading.Lock()
        self.recover()

    @property
    def replica(self) -> Replica:
        """The replica the transactions commit to."""
        return self.store.replica

    # ------------------------------------------------------------ transactions

    def begin(self) -> Transaction:
        """Start a transaction at the current global version and log TX_BEGIN."""
        tx = Transaction(
            id=generate_transaction_id(),
            state=TransactionState.ACTIVE,
            started_at=utc_now_iso(),
            snapshot_version=self.store.current_version(),
        )
        self.wal.log_tx_begin(tx.id, tx.snapshot_version)
        return tx

    def read(self, tx: Transaction, entity_id: str) -> Optional[Entity]:
        """The entity as the transaction sees it: its own buffered write, else the store at its snapshot.

        A found entity's version is recorded in the read set (and its write clock kept
        as the base of a later write); every call returns a fresh object."""
        own = tx.write_set.get(entity_id)
        if own is not None:
            return own
        entity, clock, token, stamp = self.store.entities.read_for_update(entity_id, tx.snapshot_version)
        if entity is not None:
            tx.add_read(entity_id, entity.version)
            with self._bases_lock:
                self._bases.setdefault(tx.id, {}).setdefault(entity_id, (clock, token, stamp))
        return entity

    def write(self, tx: Transaction, entity: Entity) -> None:
        """Buffer ``entity`` for commit (reading it first, so blind overwrites are checked too)."""
        if not tx.is_active():
            raise TransactionError(
                f"Transaction {tx.id} is not active (state: {tx.state.value})", tx_id=tx.id, state=tx.state.value
            )
        if entity.id in tx.read_set and entity.id not in tx.write_set:
            old_version = tx.read_set[entity.id]
        else:
            existing = self.read(tx, entity.id)
            old_version = existing.version if existing is not None else 0
        self.wal.log_write(tx.id, entity.id, old_version, entity.version)
        tx.add_write(entity)

    def commit(self, tx: Transaction) -> CommitResult:
        """Commit atomically unless something the transaction read has changed since.

        Returns success and the new global version, or ``success=False`` with the version
        conflicts (``reason="version_conflict"``) or the write error. A transaction that is
        not ACTIVE gets ``success=False`` and "cannot commit". Waits up to ``lock_timeout``
        for ``.got.lock`` and raises RuntimeError (the transaction stays ACTIVE) after that."""
        if not tx.can_commit():
            return CommitResult(success=False, reason=f"Transaction {tx.id} cannot commit in state {tx.state.value}")
        shared = self.store.shared
        with shared.commit_lock:
            gate = _CommitGate.enter(self.lock, self.lock_timeout)
            try:
                with self._wal_hold():
                    tx.state = TransactionState.PREPARING
                    self.wal.log_tx_prepare(tx.id)
                    with self._bases_lock:
                        seen = self._bases.pop(tx.id, {})
                    try:
                        result = self.store.entities.put_batch(
                            list(tx.write_set.values()),
                            validate=self.store.validate_on_save,
                            tx_id=tx.id,
                            bases={entity_id: clock for entity_id, (clock, _, _) in seen.items()},
                            check=lambda: self._detect_conflicts(
                                tx,
                                {k: token for k, (_, token, _) in seen.items()},
                                {k: st for k, (_, _, st) in seen.items()},
                            ),
                        )
                    except Exception as exc:
                        tx.state = TransactionState.ABORTED
                        self.wal.log_tx_abort(tx.id, f"write_failed: {exc}")
                        return CommitResult(success=False, reason=f"write_failed: {exc}")
                    if result.version is None:
                        tx.state = TransactionState.ABORTED
                        self.wal.log_tx_abort(tx.id, "version_conflict")
                        return CommitResult(success=False, conflicts=list(result.refused), reason="version_conflict")
                    tx.state = TransactionState.COMMITTED
                    self.wal.log_tx_commit(tx.id, result.version)
            finally:
                gate.leave()
        self.store.entities.settle_durably(result.lsn, self.durability)
        return CommitResult(success=True, version=result.version)

    def _wal_hold(self) -> ContextManager[None]:
        """Hold the WAL's lock from TX_PREPARE to TX_COMMIT (one lock and one look at the file for both
        lines), unless the replica fsyncs inside the commit (PARANOID): other processes' WAL lines, and
        so their commits, would then wait for that fsync instead of sharing it."""
        if self.replica.durability is Durability.PARANOID:
            return nullcontext()
        return self.wal.exclusive()

    def _detect_conflicts(
        self, tx: Transaction, tokens: Dict[str, Optional[int]], stamps: Dict[str, BoardSeen]
    ) -> List[Conflict]:
        """Version conflicts: ids both read and written whose version moved, or whose board object any
        caller changed, since the read.

        A record nothing touched since it was read (as current), on the board or in its snapshot,
        needs no further look."""
        entities = self.store.entities
        conflicts = []
        for entity_id, expected in tx.read_set.items():
            if entity_id not in tx.write_set:
                continue
            stamp = stamps.get(entity_id)
            moved = stamp is not None and entities.board_moved(entity_id, stamp)
            token = tokens.get(entity_id)
            if not moved and token is not None and entities.untouched_since(entity_id, token):
                continue
            actual = entities.stored_version(entity_id)
            if moved and actual == expected:
                conflicts.append(
                    Conflict(
                        entity_id=entity_id,
                        expected_version=expected,
                        actual_version=actual,
                        conflict_type="board_changed",
                        message=f"Changed on the board since read at version {expected}",
                    )
                )
            elif actual != expected:
                conflicts.append(
                    Conflict(
                        entity_id=entity_id,
                        expected_version=expected,
                        actual_version=actual,
                        conflict_type="version_mismatch",
                        message=f"Expected version {expected}, got {actual}",
                    )
                )
        return conflicts

    def rollback(self, tx: Transaction, reason: str = "explicit") -> None:
        """Abandon an ACTIVE or PREPARING transaction: clear its writes and log TX_ROLLBACK."""
        if not tx.can_rollback():
            raise TransactionError(
                f"Transaction {tx.id} cannot rollback in state {tx.state.value}", tx_id=tx.id, state=tx.state.value
            )
        tx.write_set.clear()
        tx.state = TransactionState.ROLLED_BACK
        with self._bases_lock:
            self._bases.pop(tx.id, None)
        self.wal.log_tx_rollback(tx.id, reason)

    def recover(self) -> RecoveryResult:
        """Run crash recovery on the directory (see :class:`RecoveryManager`)."""
        with RecoveryManager(self.got_dir, self.durability) as recovery:
            return recovery.recover()

    # ---------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Release the WAL and the replica (closed, and its syncing stopped, with its last user)."""
        self.wal.close()
        self.store.close()

    def __enter__(self) -> "TransactionManager":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = ["TransactionManager", "CommitResult", "Conflict", "ProcessLock"]
