"""compat: the old ``cortical.got`` API, so existing callers switch by changing the import prefix.

Each re-export below is one line; ``__all__`` is derived from them, so a new
public name needs nothing but its import line.
"""

from types import ModuleType as _ModuleType

from compat.checksums import compute_checksum as compute_checksum
from compat.checksums import compute_file_checksum as compute_file_checksum
from compat.checksums import verify_checksum as verify_checksum
from compat.checksums import verify_file_checksum as verify_file_checksum
from compat.config import DurabilityMode as DurabilityMode
from compat.config import GoTConfig as GoTConfig
from compat.conflict import ConflictResolver as ConflictResolver
from compat.conflict import ConflictStrategy as ConflictStrategy
from compat.conflict import RecordedConflict as RecordedConflict
from compat.conflict import SyncConflict as SyncConflict
from compat.errors import ConflictError as ConflictError
from compat.errors import CorruptionError as CorruptionError
from compat.errors import GoTError as GoTError
from compat.errors import NotFoundError as NotFoundError
from compat.errors import SyncError as SyncError
from compat.errors import TransactionError as TransactionError
from compat.errors import ValidationError as ValidationError
from compat.locking import ProcessLock as ProcessLock
from compat.recovery import RecoveryManager as RecoveryManager
from compat.recovery import RecoveryResult as RecoveryResult
from compat.recovery import RepairResult as RepairResult
from compat.sharing import DirectoryLockedError as DirectoryLockedError
from compat.transaction import Transaction as Transaction
from compat.transaction import TransactionState as TransactionState
from compat.transaction import generate_transaction_id as generate_transaction_id
from compat.types import Decision as Decision
from compat.types import Edge as Edge
from compat.types import Entity as Entity
from compat.types import Epic as Epic
from compat.types import Handoff as Handoff
from compat.types import Sprint as Sprint
from compat.types import Task as Task
from compat.tx_manager import CommitResult as CommitResult
from compat.tx_manager import Conflict as Conflict
from compat.tx_manager import TransactionManager as TransactionManager
from compat.versioned_store import VersionedStore as VersionedStore
from compat.wal import WALManager as WALManager

__all__ = sorted(
    name for name, value in list(globals().items()) if not name.startswith("_") and not isinstance(value, _ModuleType)
)
