"""Record framing for the update log: length, CRC-32 and a msgpack body, sans-I/O.

The byte layout is documented in docs/storage.md; this module is its only encoder and
decoder, so the file format lives in one place.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import Enum

import msgpack

SEGMENT_MAGIC = b"AGSTLOG1"
SEGMENT_VERSION = 1
_HEADER = struct.Struct("<8sII")
SEGMENT_HEADER_SIZE = _HEADER.size
_FRAME = struct.Struct("<II")
FRAME_HEADER_SIZE = _FRAME.size
ZERO_FRAME_HEADER = bytes(FRAME_HEADER_SIZE)
MAX_RECORD_SIZE = 512 * 1024 * 1024

KIND_UPDATE = 1


@dataclass(frozen=True, slots=True)
class Record:
    """One log record: its sequence number, its kind and its payload (a Yjs update)."""

    lsn: int
    kind: int
    payload: bytes


class FrameProblem(Enum):
    """Why the bytes at an offset are not a valid record."""

    SHORT_HEADER = "incomplete record header"
    LENGTH_PAST_END = "record length runs past the end of the file"
    LENGTH_TOO_LARGE = "record length is implausibly large"
    CRC_MISMATCH = "checksum mismatch"
    BAD_BODY = "record body is not a valid [lsn, kind, payload] array"
    HOLE = "a run of zero bytes (never written) precedes later data"


def encode_segment_header() -> bytes:
    """The fixed 16-byte header that opens every segment file."""
    head = SEGMENT_MAGIC + struct.pack("<I", SEGMENT_VERSION)
    return head + struct.pack("<I", zlib.crc32(head))


def check_segment_header(data: bytes) -> str | None:
    """Return None when `data` starts with a valid segment header, else the reason."""
    if len(data) < SEGMENT_HEADER_SIZE:
        return "segment header is incomplete"
    magic, version, crc = _HEADER.unpack_from(data, 0)
    if magic != SEGMENT_MAGIC:
        return "not an agentstate log segment (bad magic)"
    if zlib.crc32(data[:12]) != crc:
        return "segment header checksum mismatch"
    if version != SEGMENT_VERSION:
        return f"unsupported segment format version {version}"
    return None


def encode_record(lsn: int, kind: int, payload: bytes, packer: msgpack.Packer | None = None) -> bytes:
    """Frame one record: u32 length, u32 CRC-32 of (length bytes + body), body.

    A caller that serialises its appends may pass its own Packer to save building one.
    """
    body = (packer or msgpack.Packer(use_bin_type=True)).pack((lsn, kind, payload))
    length = struct.pack("<I", len(body))
    return length + struct.pack("<I", zlib.crc32(body, zlib.crc32(length))) + body


def decode_at(data: bytes | memoryview, offset: int) -> tuple[Record, int] | FrameProblem:
    """Decode the record at `offset`; return it with the next offset, or the problem found."""
    end = len(data)
    if end - offset < FRAME_HEADER_SIZE:
        return FrameProblem.SHORT_HEADER
    length, crc = _FRAME.unpack_from(data, offset)
    if length > MAX_RECORD_SIZE:
        return FrameProblem.LENGTH_TOO_LARGE
    start = offset + FRAME_HEADER_SIZE
    stop = start + length
    if stop > end:
        return FrameProblem.LENGTH_PAST_END
    body = data[start:stop]
    if zlib.crc32(body, zlib.crc32(data[offset : offset + 4])) != crc:
        return FrameProblem.CRC_MISMATCH
    try:
        value = msgpack.unpackb(body, use_list=False, raw=False)
    except Exception:
        return FrameProblem.BAD_BODY
    if (
        not isinstance(value, tuple)
        or len(value) != 3
        or type(value[0]) is not int
        or type(value[1]) is not int
        or not isinstance(value[2], bytes)
        or value[0] < 1
    ):
        return FrameProblem.BAD_BODY
    return Record(value[0], value[1], value[2]), stop


def find_next_valid(data: bytes | memoryview, offset: int, after_lsn: int) -> int | None:
    """Scan forward byte by byte for the next valid record with lsn > after_lsn.

    Used to tell a torn tail (nothing valid follows) from mid-file corruption, and by
    repair to resynchronise after damage.
    """
    end = len(data)
    pos = offset
    while pos + FRAME_HEADER_SIZE <= end:
        length = int.from_bytes(data[pos : pos + 4], "little")
        if length <= end - pos - FRAME_HEADER_SIZE:
            found = decode_at(data, pos)
            if isinstance(found, tuple) and found[0].lsn > after_lsn:
                return pos
        pos += 1
    return None
