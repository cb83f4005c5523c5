"""The one lib0 varuint and Yjs state-vector codec, with how strictly to decode a parameter.

Yjs and y-protocols encode numbers as lib0 varuints (7 bits per byte, least significant
group first, high bit = more bytes follow) and a state vector as a varuint count followed
by (client id, clock) pairs. Callers differ only in how much they distrust the bytes:

- `Strictness.PROTOCOL`: bytes from a peer, checked as docs/protocol.md says (at most 8
  bytes, at most 2**53-1, minimal encodings only, no client twice in a state vector);
- `Strictness.BOUNDED`: bytes pycrdt or a caller of the replica produced (at most 8 bytes;
  a repeated client keeps its last clock), the replica's default;
- `Strictness.LENIENT`: numbers inside Yjs updates taken apart by transport.updates, where
  only boundaries matter (up to 10 bytes, any value).

Every decoding failure raises `VarUintError` (a ValueError) whose message names what was
being read; transport wraps it in its own error types.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest varuint a PROTOCOL decode accepts: JavaScript's Number.MAX_SAFE_INTEGER, as lib0 enforces."""

MAX_VARUINT_BYTES = 8
"""A varuint of at most 2**53-1 needs at most 8 bytes (7 payload bits per byte)."""

LENIENT_VARUINT_BYTES = 10
"""Longest varuint a LENIENT decode reads (70 bits: more than any 64-bit encoder writes)."""


class Strictness(enum.Enum):
    """How much a decode distrusts its input (see the module docstring)."""

    PROTOCOL = "protocol"
    BOUNDED = "bounded"
    LENIENT = "lenient"


class VarUintError(ValueError):
    """Bytes that are not a valid varuint or state vector at the requested strictness."""


def encode_varuint(value: int) -> bytes:
    """Encode a non-negative int of at most 2**53-1 as a lib0 varuint."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"varuint must be an int, got {type(value).__name__}")
    if value < 0 or value > MAX_SAFE_INTEGER:
        raise ValueError(f"varuint out of range [0, 2**53-1]: {value}")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varuint(
    data: bytes, pos: int, strictness: Strictness = Strictness.BOUNDED, what: str = "varuint"
) -> tuple[int, int]:
    """Decode the varuint at `pos`; return (value, position after it) or raise VarUintError."""
    if pos < len(data) and data[pos] < 0x80:
        return data[pos], pos + 1
    limit = LENIENT_VARUINT_BYTES if strictness is Strictness.LENIENT else MAX_VARUINT_BYTES
    start, value = pos, 0
    for index in range(limit):
        if pos >= len(data):
            raise VarUintError(f"truncated input: expected {what} at offset {pos}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            if strictness is Strictness.PROTOCOL:
                if byte == 0 and index > 0:
                    raise VarUintError(f"non-minimal {what} encoding at offset {start}")
                if value > MAX_SAFE_INTEGER:
                    raise VarUintError(f"{what} at offset {start} exceeds 2**53-1")
            return value, pos
    raise VarUintError(f"{what} at offset {start} is longer than {limit} bytes")


def decode_state_vector(data: bytes, strictness: Strictness = Strictness.BOUNDED) -> dict[int, int]:
    """Client id -> clock. Raises VarUintError for anything that is not exactly one state vector."""
    count, pos = read_varuint(data, 0, strictness, "state vector length")
    if count > (len(data) - pos) // 2:
        raise VarUintError(f"state vector claims {count} entries but only {len(data) - pos} byte(s) follow")
    result: dict[int, int] = {}
    for _ in range(count):
        client, pos = read_varuint(data, pos, strictness, "state vector client id")
        clock, pos = read_varuint(data, pos, strictness, "state vector clock")
        if strictness is Strictness.PROTOCOL and client in result:
            raise VarUintError(f"state vector names client {client} twice")
        result[client] = clock
    if pos != len(data):
        raise VarUintError(f"{len(data) - pos} trailing byte(s) after state vector")
    return result


def encode_state_vector(clocks: Mapping[int, int]) -> bytes:
    """Encode client id -> clock as Yjs does (entry count, then client/clock pairs, by client)."""
    parts = [encode_varuint(len(clocks))]
    for client, clock in sorted(clocks.items()):
        parts.append(encode_varuint(client))
        parts.append(encode_varuint(clock))
    return b"".join(parts)


def missing_from(ours: dict[int, int], theirs: dict[int, int]) -> int:
    """How many operations (clock ticks) we hold that `theirs` lacks: how far behind they are."""
    return sum(max(0, clock - theirs.get(client, 0)) for client, clock in ours.items())
