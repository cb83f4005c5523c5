"""Crash recovery of the old ``cortical.got`` API, over the replica of a got directory.

A commit is one replica transaction, so a crash never leaves half a commit in the
store. What recovery still does, in the old order:

1. finish every transaction the WAL shows as begun but not finished: one whose writes
   reached the replica before the crash gets its TX_COMMIT; the others get TX_ROLLBACK
   "crash_recovery" (nothing of theirs is in the store);
2. find orphans: entities that no WRITE or ADOPTED line of ``current.wal`` names (written
   outside a transaction, or arrived from a peer), and adopt them; a corrupt orphan is
   deleted, unless another replica wrote it (a delete would replicate to every peer);
3. verify every entity record (checksum, type, class) and count corrupt WAL lines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple, Union

from compat.checksums import compute_checksum
from compat.config import DurabilityMode
from compat.errors import CorruptionError
from compat.managed_wal import ManagedWAL, WalScan
from compat.versioned_store import VersionedStore

ORPHAN_STRATEGIES = ("delete", "adopt")


@dataclass
class RecoveryResult:
    """What a recovery run found and did."""

    success: bool
    recovered_transactions: int
    rolled_back: List[str] = field(default_factory=list)
    corrupted_entities: List[str] = field(default_factory=list)
    corrupted_wal_entries: int = 0
    orphans_detected: List[str] = field(default_factory=list)
    orphans_repaired: int = 0
    indexes_rebuilt: bool = False
    actions_taken: List[str] = field(default_factory=list)

    def add_action(self, action: str) -> None:
        """Record one human-readable action."""
        self.actions_taken.append(action)


@dataclass
class RepairResult:
    """What an orphan repair did."""

    success: bool
    repaired_count: int
    repaired_entities: List[str] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)


class RecoveryManager:
    """Recovers a got directory after a crash: WAL, orphans and integrity checks.

    Opens its own ``store`` (``got_dir/entities`` over the directory's replica) and ``wal``
    (``got_dir/wal``); needs no TransactionManager. Close it when done."""

    def __init__(self, got_dir: Union[str, Path], durability: DurabilityMode = DurabilityMode.BALANCED) -> None:
        self.got_dir: Path = Path(got_dir)
        self.got_dir.mkdir(parents=True, exist_ok=True)
        self.store: VersionedStore = VersionedStore(
            self.got_dir / "entities", durability, replica_dir=self.got_dir, sync=False
        )
        try:
            self.wal: ManagedWAL = ManagedWAL(self.got_dir / "wal", durability)
        except BaseException:
            self.store.close()
            raise

    # --------------------------------------------------------------- recover

    def recover(self) -> RecoveryResult:
        """Run every recovery step and report; safe to run repeatedly."""
        result = RecoveryResult(success=True, recovered_transactions=0)
        completed, rolled_back = self._finish_incomplete()
        result.rolled_back = rolled_back
        result.recovered_transactions = len(completed) + len(rolled_back)
        if rolled_back:
            result.add_action(f"Rolled back {len(rolled_back)} incomplete transaction(s)")
            for tx_id in rolled_back:
                result.add_action(f"Rolled back incomplete transaction {tx_id}")
        for tx_id, version in completed:
            result.add_action(
                f"Completed transaction {tx_id}: its writes reached the replica before the crash (version {version})"
            )

        orphans = self.detect_orphaned_entities()
        result.orphans_detected = orphans
        if orphans:
            result.add_action(f"Detected {len(orphans)} orphaned entit{'y' if len(orphans) == 1 else 'ies'}")
            repair = self.repair_orphans("adopt")
            result.orphans_repaired = repair.repaired_count
            for entity_id in repair.repaired_entities:
                result.add_action(f"Adopted orphaned entity {entity_id}")
            for error in repair.errors:
                result.add_action(f"Orphan repair: {error}")
            if not repair.success or repair.errors:
                result.success = False

        corrupted = self.verify_store_integrity()
        if corrupted:
            result.corrupted_entities = corrupted
            result.success = False
            result.add_action(f"Found {len(corrupted)} corrupted entities: {', '.join(corrupted)}")
            for entity_id in corrupted:
                result.add_action(f"Corrupted entity {entity_id} (restore it from a peer or resolve it by hand)")

        result.corrupted_wal_entries = self.verify_wal_integrity()
        if result.corrupted_wal_entries:
            result.add_action(f"Found {result.corrupted_wal_entries} corrupted WAL entries (skipped on replay)")

        if not result.actions_taken:
            result.add_action("No recovery needed: the system is clean")
        return result

    def needs_recovery(self) -> bool:
        """True with an unfinished transaction, a corrupt entity or a corrupt WAL line (orphans do not count)."""
        scan = self._scan()
        return bool(scan.open_txs) or scan.corrupt > 0 or bool(self.verify_store_integrity())

    # ------------------------------------------------------------ transactions

    def _scan(self) -> WalScan:
        return self.wal.scan()

    def _finish_incomplete(self) -> Tuple[List[Tuple[str, int]], List[str]]:
        """Log TX_COMMIT for unfinished transactions whose writes are in the replica, TX_ROLLBACK for the rest.

        Only when no other process has the WAL open: another process's unfinished
        transaction may be in flight, not crashed. A crashed one is finished by the next
        recovery that runs alone (its writes are all in the replica or none are)."""
        with self.wal.alone() as alone:
            if not alone:
                return [], []
            return self._finish_incomplete_alone()

    def _finish_incomplete_alone(self) -> Tuple[List[Tuple[str, int]], List[str]]:
        scan = self._scan()
        completed: List[Tuple[str, int]] = []
        rolled_back: List[str] = []
        for tx_id in scan.open_txs:
            version = self._committed_version(tx_id, scan.tx_writes.get(tx_id, []))
            if version is not None:
                self.wal.log_tx_commit(tx_id, version)
                completed.append((tx_id, version))
            else:
                self.wal.log_tx_rollback(tx_id, "crash_recovery")
                rolled_back.append(tx_id)
        return completed, rolled_back

    def _committed_version(self, tx_id: str, entity_ids: List[str]) -> Optional[int]:
        for entity_id in entity_ids:
            version = self.store.entities.written_by(entity_id, tx_id)
            if version is not None:
                return version
        return None

    def rollback_incomplete_transactions(self) -> List[str]:
        """Finish every unfinished transaction; returns the ids rolled back."""
        return self._finish_incomplete()[1]

    # ----------------------------------------------------------------- orphans

    def detect_orphaned_entities(self) -> List[str]:
        """Entities that no WRITE or ADOPTED line of ``current.wal`` names."""
        known = self._scan().known_ids
        return [entity_id for entity_id in self.store.entities.ids() if entity_id not in known]

    def repair_orphans(self, strategy: str = "delete") -> RepairResult:
        """Delete the orphans, or adopt them (an ADOPTED line each; corrupt ones are deleted)."""
        if strategy not in ORPHAN_STRATEGIES:
            raise ValueError(f"Invalid strategy: {strategy!r} (expected one of {', '.join(ORPHAN_STRATEGIES)})")
        result = RepairResult(success=True, repaired_count=0)
        for entity_id in self.detect_orphaned_entities():
            try:
                if strategy == "adopt":
                    try:
                        self.store._read_and_verify(entity_id)
                    except (CorruptionError, ValueError) as exc:
                        writers = self._foreign_writers(entity_id)
                        if writers:
                            result.errors.append(
                                f"Corrupted orphan {entity_id} came from {', '.join(writers)}; left in place "
                                f"(a delete would replicate to every peer): {exc}"
                            )
                            continue
                        self._drop(entity_id)
                        result.errors.append(f"Deleted corrupted orphan {entity_id}: {exc}")
                    else:
                        self._adopt(entity_id)
                else:
                    self._drop(entity_id)
            except Exception as exc:
                result.success = False
                result.errors.append(f"Could not repair {entity_id}: {exc}")
                continue
            result.repaired_count += 1
            result.repaired_entities.append(entity_id)
        return result

    def _foreign_writers(self, entity_id: str) -> List[str]:
        """Other replicas that wrote this entity (their data is never deleted behind their back)."""
        mine = self.store.replica.replica_id
        return sorted({w.writer.rsplit(".", 1)[0] for w in self.store.entities.records.history(entity_id)} - {mine})

    def _adopt(self, entity_id: str) -> None:
        record = {"op": "ADOPTED", "entity_id": entity_id, "reason": "orphan_recovery", "timestamp": time.time()}
        record["checksum"] = compute_checksum(record)
        self.wal.append_record(record)

    def _drop(self, entity_id: str) -> None:
        """Remove an orphan without using up a global version (the old code unlinked its file)."""
        entities = self.store.entities
        with entities.replica.transaction(wait=False):
            if entities.exists(entity_id):
                entities.delete_raw(entity_id, version=entities.current_version())
        entities.settle_durably(entities.replica.last_lsn, self.store.durability)

    # --------------------------------------------------------------- integrity

    def verify_store_integrity(self) -> List[str]:
        """Ids of entity records that fail their checksum, type or class."""
        return self.store.entities.verify_all()

    def verify_wal_integrity(self) -> int:
        """Non-blank ``current.wal`` lines that are not JSON, lack a checksum or fail it."""
        return self._scan().corrupt

    # ---------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Release the WAL and the replica."""
        self.wal.close()
        self.store.close()

    def __enter__(self) -> "RecoveryManager":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = ["RecoveryManager", "RecoveryResult", "RepairResult"]
