"""Checksums in the exact canonical form of ``cortical.utils.checksums``.

Every entity file, history line and WAL line of an old data directory carries
one of these, so the form (sorted keys, compact separators, ASCII escaping,
UTF-8, truncated lowercase SHA-256) must match byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

ChecksumInput = Union[bytes, Dict[str, Any]]

CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)
"""One encoder for every checksum (``json.dumps`` with these options builds a new one per call)."""

DEFAULT_TRUNCATE = 16


def canonical_bytes(data: ChecksumInput) -> bytes:
    """Return the bytes a checksum is taken over: ``data`` itself, or a dict's canonical JSON."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, dict):
        return CANONICAL_JSON.encode(data).encode("utf-8")
    raise TypeError(f"checksum input must be bytes or dict, not {type(data).__name__}")


def compute_checksum(data: ChecksumInput, truncate: Optional[int] = DEFAULT_TRUNCATE) -> str:
    """Lowercase SHA-256 hex of ``data`` cut to ``truncate`` characters (0 or None: all 64)."""
    digest = hashlib.sha256(canonical_bytes(data)).hexdigest()
    return digest[:truncate] if truncate else digest


def verify_checksum(data: ChecksumInput, expected: str, truncate: Optional[int] = DEFAULT_TRUNCATE) -> bool:
    """True when ``data`` checksums to ``expected``."""
    return compute_checksum(data, truncate) == expected


def compute_file_checksum(path: Union[str, Path], truncate: Optional[int] = DEFAULT_TRUNCATE) -> str:
    """Checksum of the JSON object in ``path``; the file's formatting does not matter."""
    with open(path, "r", encoding="utf-8") as handle:
        data = json.load(handle)
    return compute_checksum(data, truncate)


def verify_file_checksum(path: Union[str, Path], expected: str, truncate: Optional[int] = DEFAULT_TRUNCATE) -> bool:
    """True when the JSON object in ``path`` checksums to ``expected``."""
    return compute_file_checksum(path, truncate) == expected


__all__ = [
    "canonical_bytes",
    "compute_checksum",
    "verify_checksum",
    "compute_file_checksum",
    "verify_file_checksum",
]
