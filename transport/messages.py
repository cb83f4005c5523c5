"""The messages agentstate peers exchange: the y-websocket protocol plus one hello.

Every message is one websocket frame. `encode` produces the bytes y-protocols would
produce; `decode` is total: any byte string yields a message or raises `ProtocolError`,
and payloads that reach pycrdt (state vectors, awareness updates) are checked first.
The byte layout of each message is documented in docs/protocol.md.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import msgpack

from replica import statevector
from replica.statevector import encode_state_vector
from transport import closecodes
from transport.wire import (
    ProtocolError,
    Reader,
    encode_var_bytes,
    encode_var_string,
    encode_varuint,
)


class MessageType(enum.IntEnum):
    """Outer message type, the first varuint of every frame."""

    SYNC = 0
    AWARENESS = 1
    AUTH = 2
    QUERY_AWARENESS = 3
    HELLO = 0x61
    """agentstate's own; y-protocols uses 0-3 and Hocuspocus 0-8, 0x61 is ASCII 'a'."""


class SyncType(enum.IntEnum):
    """Second varuint of a sync message (y-protocols sync.js)."""

    STEP1 = 0
    STEP2 = 1
    UPDATE = 2


class AuthType(enum.IntEnum):
    """Second varuint of an auth message (y-protocols auth.js)."""

    PERMISSION_DENIED = 0


PROTOCOL_VERSION = 1
"""Version of the hello and of the conversation it opens; the only one this code speaks."""

EMPTY_UPDATE = b"\x00\x00"
"""A Yjs v1 update that carries nothing: no structs, empty delete set."""

MIN_UPDATE_SIZE = len(EMPTY_UPDATE)
"""No Yjs v1 update is shorter than the empty one."""

MAX_HELLO_BODY_SIZE = 64 * 1024
"""Upper bound of the msgpack body of a hello."""

MAX_REPLICA_ID_SIZE = 128
"""Upper bound, in UTF-8 bytes, of a replica id."""

MAX_ROOMS = 256
"""Upper bound of the number of rooms a hello names."""

MAX_ROOM_SIZE = 1024
"""Upper bound, in UTF-8 bytes, of one room name."""

MAX_CAPABILITIES = 64
"""Upper bound of the number of capabilities a hello announces."""

MAX_CAPABILITY_SIZE = 64
"""Upper bound, in UTF-8 bytes, of one capability name."""

MAX_DIGEST_SIZE = 64
"""Upper bound of the optional state digest (room for a SHA-512)."""


@dataclass(frozen=True, slots=True)
class SyncStep1:
    """Sync step 1: the sender's state vector, asking for what it lacks."""

    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SyncStep2:
    """Sync step 2: the update answering a step 1 (everything the asker lacks)."""

    update: bytes


@dataclass(frozen=True, slots=True)
class SyncUpdate:
    """An incremental document update pushed after (or during) the initial sync."""

    update: bytes


@dataclass(frozen=True, slots=True)
class Awareness:
    """An awareness update (who is online, what they do); `payload` is its inner bytes."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class AuthPermissionDenied:
    """y-protocols auth message: the sender refuses what we sent, with a reason."""

    reason: str


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    """Asks the receiver to send every awareness state it knows."""


@dataclass(frozen=True, slots=True)
class Hello:
    """agentstate's opening message: who the sender is and what it can do.

    Only agentstate peers send it; a plain Yjs peer never does.
    """

    protocol_version: int
    replica_id: str
    rooms: list[str]
    capabilities: frozenset[str] = field(default_factory=frozenset)
    digest: bytes | None = None


Message: TypeAlias = (
    SyncStep1 | SyncStep2 | SyncUpdate | Awareness | AuthPermissionDenied | QueryAwareness | Hello
)
"""Any message `decode` can return."""

MESSAGE_TYPES: tuple[type, ...] = (
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    Awareness,
    AuthPermissionDenied,
    QueryAwareness,
    Hello,
)
"""The classes making up `Message`, for isinstance checks."""


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    """One client's record inside an awareness update; `state` None means it went away."""

    client_id: int
    clock: int
    state: Any


def encode(message: Message) -> bytes:
    """Serialise one message to the bytes of one websocket frame."""
    match message:
        case SyncStep1(state_vector=state_vector):
            return _sync_frame(SyncType.STEP1, state_vector)
        case SyncStep2(update=update):
            return _sync_frame(SyncType.STEP2, update)
        case SyncUpdate(update=update):
            return _sync_frame(SyncType.UPDATE, update)
        case Awareness(payload=payload):
            return encode_varuint(MessageType.AWARENESS) + encode_var_bytes(payload)
        case AuthPermissionDenied(reason=reason):
            return (
                encode_varuint(MessageType.AUTH)
                + encode_varuint(AuthType.PERMISSION_DENIED)
                + encode_var_string(reason)
            )
        case QueryAwareness():
            return encode_varuint(MessageType.QUERY_AWARENESS)
        case Hello():
            body = _encode_hello_body(message)
            return encode_varuint(MessageType.HELLO) + encode_var_bytes(body)
    raise TypeError(f"not a message: {message!r}")


def decode(data: bytes) -> Message:
    """Parse exactly one message from `data`; raise ProtocolError on anything else."""
    reader = Reader(data)
    kind = reader.read_varuint("message type")
    message: Message
    if kind == MessageType.SYNC:
        message = _decode_sync(reader)
    elif kind == MessageType.AWARENESS:
        payload = reader.read_var_bytes("awareness update")
        decode_awareness_update(payload)
        message = Awareness(payload)
    elif kind == MessageType.AUTH:
        auth_kind = reader.read_varuint("auth message type")
        if auth_kind != AuthType.PERMISSION_DENIED:
            raise ProtocolError(f"unknown auth message type {auth_kind}")
        message = AuthPermissionDenied(reader.read_var_string("permission denied reason"))
    elif kind == MessageType.QUERY_AWARENESS:
        message = QueryAwareness()
    elif kind == MessageType.HELLO:
        message = _decode_hello_body(reader.read_var_bytes("hello body"))
    else:
        raise ProtocolError(f"unknown message type {kind}")
    reader.expect_end(type(message).__name__)
    return message


def decode_state_vector(data: bytes) -> dict[int, int]:
    """Parse a state vector a peer sent, at the codec's PROTOCOL strictness, or raise ProtocolError."""
    try:
        return statevector.decode_state_vector(data, statevector.Strictness.PROTOCOL)
    except statevector.VarUintError as error:
        raise ProtocolError(str(error)) from None


def encode_awareness_update(entries: list[AwarenessEntry]) -> bytes:
    """Encode awareness entries as y-protocols encodeAwarenessUpdate does (JSON states)."""
    parts = [encode_varuint(len(entries))]
    for entry in entries:
        parts.append(encode_varuint(entry.client_id))
        parts.append(encode_varuint(entry.clock))
        text = json.dumps(entry.state, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        parts.append(encode_var_string(text))
    return b"".join(parts)


def decode_awareness_update(payload: bytes) -> list[AwarenessEntry]:
    """Parse an awareness update (count, then client/clock/JSON triples) or raise ProtocolError.

    JSON must be what JavaScript's JSON.parse accepts, since the update may be relayed to
    Yjs clients: no NaN or Infinity, no empty string.
    """
    reader = Reader(payload)
    count = reader.read_varuint("awareness entry count")
    if count > reader.remaining // 3:
        raise ProtocolError(
            f"awareness update claims {count} entries but only {reader.remaining} byte(s) follow"
        )
    entries = []
    for _ in range(count):
        client_id = reader.read_varuint("awareness client id")
        clock = reader.read_varuint("awareness clock")
        text = reader.read_var_string("awareness state")
        entries.append(AwarenessEntry(client_id, clock, _parse_json(text)))
    reader.expect_end("awareness update")
    return entries


def _sync_frame(sync_type: SyncType, payload: bytes) -> bytes:
    """Frame a sync message: outer type 0, sync sub-type, varUint8Array payload."""
    return encode_varuint(MessageType.SYNC) + encode_varuint(sync_type) + encode_var_bytes(payload)


def _decode_sync(reader: Reader) -> Message:
    """Decode the part of a sync message after the outer type."""
    sync_kind = reader.read_varuint("sync message type")
    if sync_kind == SyncType.STEP1:
        state_vector = reader.read_var_bytes("state vector")
        decode_state_vector(state_vector)
        return SyncStep1(state_vector)
    if sync_kind in (SyncType.STEP2, SyncType.UPDATE):
        update = reader.read_var_bytes("update")
        if len(update) < MIN_UPDATE_SIZE:
            raise ProtocolError(f"update of {len(update)} byte(s) is shorter than an empty update")
        return SyncStep2(update) if sync_kind == SyncType.STEP2 else SyncUpdate(update)
    raise ProtocolError(f"unknown sync message type {sync_kind}")


def _reject_constant(name: str) -> Any:
    """json.loads hook refusing NaN and Infinity, which JSON.parse rejects."""
    raise ValueError(f"{name} is not JSON")


def _parse_json(text: str) -> Any:
    """Parse JSON as JSON.parse would, turning every failure into ProtocolError."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        raise ProtocolError(f"awareness state is not valid JSON: {error}") from None


def _hello_problem(hello: Hello) -> str | None:
    """Why `hello` is not a valid hello, or None if it is."""
    version = hello.protocol_version
    if type(version) is not int or not 0 <= version <= 2**32 - 1:
        return f"protocol version must be an int in [0, 2**32), got {version!r}"
    problem = _text_problem("replica id", hello.replica_id, MAX_REPLICA_ID_SIZE)
    if problem:
        return problem
    if not isinstance(hello.rooms, list) or len(hello.rooms) > MAX_ROOMS:
        return f"rooms must be a list of at most {MAX_ROOMS} names"
    for room in hello.rooms:
        problem = _text_problem("room", room, MAX_ROOM_SIZE)
        if problem:
            return problem
    if len(set(hello.rooms)) != len(hello.rooms):
        return "rooms are not unique"
    capabilities = hello.capabilities
    if not isinstance(capabilities, frozenset) or len(capabilities) > MAX_CAPABILITIES:
        return f"capabilities must be a frozenset of at most {MAX_CAPABILITIES} names"
    for capability in capabilities:
        problem = _text_problem("capability", capability, MAX_CAPABILITY_SIZE)
        if problem:
            return problem
    digest = hello.digest
    if digest is not None and (type(digest) is not bytes or len(digest) > MAX_DIGEST_SIZE):
        return f"digest must be bytes of at most {MAX_DIGEST_SIZE} bytes"
    return None


def _text_problem(what: str, value: object, max_size: int) -> str | None:
    """Why `value` is not a non-empty printable str of at most `max_size` UTF-8 bytes."""
    if type(value) is not str:
        return f"{what} must be a string, got {type(value).__name__}"
    if not value or not value.isprintable():
        return f"{what} must be non-empty and printable: {value!r}"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return f"{what} is not encodable as UTF-8: {value!r}"
    if size > max_size:
        return f"{what} is {size} bytes long, more than {max_size}"
    return None


def _encode_hello_body(hello: Hello) -> bytes:
    """The msgpack map carried by a hello: keys v, i, r, c and, if set, d."""
    problem = _hello_problem(hello)
    if problem:
        raise ValueError(f"invalid hello: {problem}")
    body: dict[str, Any] = {
        "v": hello.protocol_version,
        "i": hello.replica_id,
        "r": list(hello.rooms),
        "c": sorted(hello.capabilities),
    }
    if hello.digest is not None:
        body["d"] = hello.digest
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    if len(packed) > MAX_HELLO_BODY_SIZE:
        raise ValueError(f"hello body of {len(packed)} bytes exceeds {MAX_HELLO_BODY_SIZE}")
    return packed


def _unique_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """msgpack object_pairs_hook refusing duplicate keys."""
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key in map")
    return result


def _refuse_ext(code: int, data: bytes) -> Any:
    """msgpack ext_hook: a hello never carries extension types."""
    raise ValueError(f"msgpack extension type {code} not allowed")


def _decode_hello_body(body: bytes) -> Hello:
    """Validate the msgpack body of a hello strictly; unknown keys are ignored."""
    if len(body) > MAX_HELLO_BODY_SIZE:
        raise ProtocolError(f"hello body of {len(body)} bytes exceeds {MAX_HELLO_BODY_SIZE}")
    try:
        fields = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            object_pairs_hook=_unique_map,
            ext_hook=_refuse_ext,
            max_array_len=max(MAX_ROOMS, MAX_CAPABILITIES),
            max_map_len=64,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise ProtocolError(f"hello body is not valid msgpack: {error}") from None
    if not isinstance(fields, dict):
        raise ProtocolError(f"hello body must be a map, got {type(fields).__name__}")
    version = fields.get("v")
    if type(version) is not int:
        raise ProtocolError("hello lacks an integer protocol version (key 'v')")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"peer speaks protocol version {version}, this node speaks {PROTOCOL_VERSION}",
            closecodes.UNSUPPORTED_VERSION,
        )
    missing = [key for key in ("i", "r", "c") if key not in fields]
    if missing:
        raise ProtocolError(f"hello lacks key(s) {', '.join(missing)}")
    rooms, capabilities = fields["r"], fields["c"]
    if not isinstance(rooms, list) or not isinstance(capabilities, list):
        raise ProtocolError("hello rooms ('r') and capabilities ('c') must be arrays")
    if not all(type(name) is str for name in capabilities):
        raise ProtocolError("hello capabilities must be strings")
    if len(set(capabilities)) != len(capabilities):
        raise ProtocolError("hello capabilities are not unique")
    hello = Hello(
        protocol_version=version,
        replica_id=fields["i"],
        rooms=rooms,
        capabilities=frozenset(capabilities),
        digest=fields.get("d"),
    )
    problem = _hello_problem(hello)
    if problem:
        raise ProtocolError(f"invalid hello: {problem}")
    return hello

