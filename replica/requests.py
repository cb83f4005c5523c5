"""Requests: what writes carrying an idempotency key returned, so that a retry applies once.

A client that sent a write and lost the reply (the daemon died, the socket reset) cannot
know whether it was applied. It retries with the same key, through the daemon or on the
directory itself: the key and the result are stored in the same Doc transaction as the
write, so whichever process runs the retry finds them (after catching up under the append
lock) and returns the stored result instead of writing again. Keys are kept for
`KEEP_SECONDS`; older ones are dropped a few at a time by later keyed writes.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from pycrdt import Map

from .errors import FieldError

if TYPE_CHECKING:
    from .access import DocAccess

REQUESTS = "requests"
"""Root map: idempotency key -> {"at": unix seconds, "result": JSON text}."""
KEEP_SECONDS = 24 * 3600.0
PRUNE_PER_WRITE = 16
MAX_KEY_LENGTH = 128
MAX_STORED_RESULT = 64 * 1024


def check_key(key: object) -> str:
    """A usable idempotency key (1-128 printable ASCII characters), or FieldError."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise FieldError("request", "idempotency_key", f"must be 1-{MAX_KEY_LENGTH} printable ASCII characters")
    return key


class Requests:
    """The remembered results of keyed writes on one replica (any process on the directory)."""

    def __init__(self, access: DocAccess) -> None:
        self._access = access
        self._root = access.doc.get(REQUESTS, type=Map)

    def recall(self, key: str) -> tuple[bool, Any]:
        """(True, stored result) when a write with `key` was already applied, else (False, None)."""
        entry = self._root.get(key)
        if not isinstance(entry, Map):
            return False, None
        try:
            return True, json.loads(str(entry.get("result", "null")))
        except ValueError:
            return True, None

    def remember(self, key: str, result: Any) -> None:
        """Store `result` under `key` (inside the write's own transaction) and drop a few expired keys."""
        text = json.dumps(result, separators=(",", ":"), default=str)
        if len(text) > MAX_STORED_RESULT:
            text = json.dumps({"stored": False, "reason": "result too large to keep"})
        now = time.time()
        self._root[key] = Map({"at": now, "result": text})
        expired = []
        for other, entry in self._root.items():
            if len(expired) >= PRUNE_PER_WRITE:
                break
            at = entry.get("at") if isinstance(entry, Map) else None
            if not isinstance(at, (int, float)) or now - float(at) > KEEP_SECONDS:
                expired.append(other)
        for other in expired:
            del self._root[other]

    def __len__(self) -> int:
        return len(self._root)
