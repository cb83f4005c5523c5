"""compat: the old ``cortical.got`` API, so existing callers switch by changing the import prefix.

Names are imported on first use (PEP 562), so importing a compat submodule (or the CLI,
which lists compat's commands) does not load all of compat, pycrdt and pydantic. A new
public name needs its line in ``_HOME`` (and in the ``TYPE_CHECKING`` block for checkers).
"""

from __future__ import annotations

from importlib import import_module

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from compat.checksums import compute_checksum, compute_file_checksum, verify_checksum, verify_file_checksum
    from compat.config import DurabilityMode, GoTConfig
    from compat.conflict import ConflictResolver, ConflictStrategy, RecordedConflict, SyncConflict
    from compat.errors import (
        ConflictError,
        CorruptionError,
        GoTError,
        NotFoundError,
        SyncError,
        TransactionError,
        ValidationError,
    )
    from compat.locking import ProcessLock
    from compat.recovery import RecoveryManager, RecoveryResult, RepairResult
    from compat.sharing import DirectoryLockedError
    from compat.transaction import Transaction, TransactionState, generate_transaction_id
    from compat.tx_manager import CommitResult, Conflict, TransactionManager
    from compat.types import Decision, Edge, Entity, Epic, Handoff, Sprint, Task
    from compat.versioned_store import VersionedStore
    from compat.wal import WALManager

_HOME = {
    "compute_checksum": "checksums",
    "compute_file_checksum": "checksums",
    "verify_checksum": "checksums",
    "verify_file_checksum": "checksums",
    "DurabilityMode": "config",
    "GoTConfig": "config",
    "ConflictResolver": "conflict",
    "ConflictStrategy": "conflict",
    "RecordedConflict": "conflict",
    "SyncConflict": "conflict",
    "ConflictError": "errors",
    "CorruptionError": "errors",
    "GoTError": "errors",
    "NotFoundError": "errors",
    "SyncError": "errors",
    "TransactionError": "errors",
    "ValidationError": "errors",
    "ProcessLock": "locking",
    "RecoveryManager": "recovery",
    "RecoveryResult": "recovery",
    "RepairResult": "recovery",
    "DirectoryLockedError": "sharing",
    "Transaction": "transaction",
    "TransactionState": "transaction",
    "generate_transaction_id": "transaction",
    "CommitResult": "tx_manager",
    "Conflict": "tx_manager",
    "TransactionManager": "tx_manager",
    "Decision": "types",
    "Edge": "types",
    "Entity": "types",
    "Epic": "types",
    "Handoff": "types",
    "Sprint": "types",
    "Task": "types",
    "VersionedStore": "versioned_store",
    "WALManager": "wal",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    """Import a public name from its module the first time it is asked for (or a submodule by its name)."""
    module = _HOME.get(name)
    if module is not None:
        value = getattr(import_module(f".{module}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        try:
            return import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module 'compat' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names, as `from compat import *` sees them."""
    return sorted(set(globals()) | set(__all__))
