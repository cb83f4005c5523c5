"""Yjs state vectors: decode, encode and compare them (lib0 varuint encoding)."""

from __future__ import annotations

MAX_VARUINT_BYTES = 8


def _read_varuint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    for i in range(MAX_VARUINT_BYTES):
        if pos >= len(data):
            raise ValueError("state vector is truncated")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ValueError("state vector holds an over-long number")


def _write_varuint(value: int, out: bytearray) -> None:
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)


def decode_state_vector(data: bytes) -> dict[int, int]:
    """Client id -> clock. Raises ValueError for anything that is not exactly one state vector."""
    count, pos = _read_varuint(data, 0)
    if count > len(data):
        raise ValueError("state vector claims more entries than it has bytes")
    result: dict[int, int] = {}
    for _ in range(count):
        client, pos = _read_varuint(data, pos)
        clock, pos = _read_varuint(data, pos)
        result[client] = clock
    if pos != len(data):
        raise ValueError("state vector has trailing bytes")
    return result


def encode_state_vector(clocks: dict[int, int]) -> bytes:
    """Encode client id -> clock as Yjs does (entry count, then client/clock pairs)."""
    out = bytearray()
    _write_varuint(len(clocks), out)
    for client, clock in sorted(clocks.items()):
        _write_varuint(client, out)
        _write_varuint(clock, out)
    return bytes(out)


def missing_from(ours: dict[int, int], theirs: dict[int, int]) -> int:
    """How many operations (clock ticks) we hold that `theirs` lacks: how far behind they are."""
    return sum(max(0, clock - theirs.get(client, 0)) for client, clock in ours.items())
