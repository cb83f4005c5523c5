"""Sans-I/O state machine for one websocket connection speaking the Yjs sync protocol.

A `Session` turns received frames into events and the caller's intentions into frames;
it never touches a socket, a clock or a Doc. The caller owns the Doc: on
`StepOneReceived` it computes the diff and calls `send_step2`, on `StepTwoReceived` or
`UpdateReceived` it applies the update. Every state change is listed in `TRANSITIONS`.
Bad input yields a `ProtocolViolation` event and leaves the session exactly as it was.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from transport import closecodes
from transport.messages import (
    EMPTY_UPDATE,
    PROTOCOL_VERSION,
    AuthPermissionDenied,
    Awareness,
    Hello,
    Message,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    decode,
    encode,
)
from transport.wire import ProtocolError

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
"""Largest frame a session accepts unless told otherwise."""

READ_ONLY_REASON = "read-only connection: updates are not accepted"
"""Reason sent in the permission-denied reply to a read-only peer's update."""


class Role(enum.Enum):
    """Which end of the connection this session is; only the opening frames differ."""

    DIALER = "dialer"
    LISTENER = "listener"


class State(enum.Enum):
    """What this session knows about its peer."""

    OPEN = "open"
    """The peer has sent nothing yet."""
    SYNCING = "syncing"
    """The peer has sent traffic but neither a hello nor a step 2 (a hello may still come)."""
    GREETED = "greeted"
    """The peer's hello arrived; its step 2 has not."""
    SYNCED = "synced"
    """The peer's step 2 arrived: we hold everything it had when it answered our step 1."""
    CLOSED = "closed"
    """The caller closed the session; received frames are dropped, sends are refused."""


class Input(enum.Enum):
    """What can drive the state machine: a kind of peer message, or a local action."""

    HELLO = "hello"
    STEP1 = "step1"
    STEP2 = "step2"
    UPDATE = "update"
    AWARENESS = "awareness"
    QUERY_AWARENESS = "query_awareness"
    PERMISSION_DENIED = "permission_denied"
    SEND = "send"
    """Local: produce a frame (start, send_*, deny)."""
    CLOSE = "close"
    """Local: the connection is closing."""


_S = State
_I = Input

TRANSITIONS: dict[tuple[State, Input], State] = {
    (_S.OPEN, _I.HELLO): _S.GREETED,
    (_S.OPEN, _I.STEP1): _S.SYNCING,
    (_S.OPEN, _I.STEP2): _S.SYNCED,
    (_S.OPEN, _I.UPDATE): _S.SYNCING,
    (_S.OPEN, _I.AWARENESS): _S.SYNCING,
    (_S.OPEN, _I.QUERY_AWARENESS): _S.SYNCING,
    (_S.OPEN, _I.PERMISSION_DENIED): _S.SYNCING,
    (_S.OPEN, _I.SEND): _S.OPEN,
    (_S.OPEN, _I.CLOSE): _S.CLOSED,
    (_S.SYNCING, _I.HELLO): _S.GREETED,
    (_S.SYNCING, _I.STEP1): _S.SYNCING,
    (_S.SYNCING, _I.STEP2): _S.SYNCED,
    (_S.SYNCING, _I.UPDATE): _S.SYNCING,
    (_S.SYNCING, _I.AWARENESS): _S.SYNCING,
    (_S.SYNCING, _I.QUERY_AWARENESS): _S.SYNCING,
    (_S.SYNCING, _I.PERMISSION_DENIED): _S.SYNCING,
    (_S.SYNCING, _I.SEND): _S.SYNCING,
    (_S.SYNCING, _I.CLOSE): _S.CLOSED,
    (_S.GREETED, _I.STEP1): _S.GREETED,
    (_S.GREETED, _I.STEP2): _S.SYNCED,
    (_S.GREETED, _I.UPDATE): _S.GREETED,
    (_S.GREETED, _I.AWARENESS): _S.GREETED,
    (_S.GREETED, _I.QUERY_AWARENESS): _S.GREETED,
    (_S.GREETED, _I.PERMISSION_DENIED): _S.GREETED,
    (_S.GREETED, _I.SEND): _S.GREETED,
    (_S.GREETED, _I.CLOSE): _S.CLOSED,
    (_S.SYNCED, _I.STEP1): _S.SYNCED,
    (_S.SYNCED, _I.STEP2): _S.SYNCED,
    (_S.SYNCED, _I.UPDATE): _S.SYNCED,
    (_S.SYNCED, _I.AWARENESS): _S.SYNCED,
    (_S.SYNCED, _I.QUERY_AWARENESS): _S.SYNCED,
    (_S.SYNCED, _I.PERMISSION_DENIED): _S.SYNCED,
    (_S.SYNCED, _I.SEND): _S.SYNCED,
    (_S.SYNCED, _I.CLOSE): _S.CLOSED,
    (_S.CLOSED, _I.CLOSE): _S.CLOSED,
}
"""Every allowed (state, input) and the state it leads to; anything absent is refused.

A second hello, or a hello after the peer's step 2, is a protocol violation. Step 1,
step 2 and updates stay allowed once synced: resyncs repair dropped updates.
"""

_INPUT_OF_MESSAGE: dict[type, Input] = {
    Hello: Input.HELLO,
    SyncStep1: Input.STEP1,
    SyncStep2: Input.STEP2,
    SyncUpdate: Input.UPDATE,
    Awareness: Input.AWARENESS,
    QueryAwareness: Input.QUERY_AWARENESS,
    AuthPermissionDenied: Input.PERMISSION_DENIED,
}


class SessionUsageError(RuntimeError):
    """The caller (not the peer) asked for something the session's state forbids."""


@dataclass(frozen=True, slots=True)
class HelloReceived:
    """The peer is an agentstate node; `reply_frame`, if set, is our hello to send back."""

    hello: Hello
    reply_frame: bytes | None


@dataclass(frozen=True, slots=True)
class StepOneReceived:
    """The peer sent its state vector: answer with `send_step2(doc.get_update(state_vector))`."""

    state_vector: bytes


@dataclass(frozen=True, slots=True)
class StepTwoReceived:
    """The peer answered our step 1: apply `update` to the Doc."""

    update: bytes


@dataclass(frozen=True, slots=True)
class UpdateReceived:
    """The peer pushed an incremental update: apply it to the Doc."""

    update: bytes


@dataclass(frozen=True, slots=True)
class AwarenessReceived:
    """The peer sent an awareness update (already checked to be well formed)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class AwarenessQueried:
    """The peer asks for every awareness state we know."""


@dataclass(frozen=True, slots=True)
class PermissionDenied:
    """The peer refused something we sent (y-protocols auth message)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Synced:
    """The peer's first step 2 arrived (emitted right after its StepTwoReceived)."""


@dataclass(frozen=True, slots=True)
class UpdateRefused:
    """A read-only peer sent document content; send `reply_frame`, do not apply anything."""

    reason: str
    reply_frame: bytes


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer sent bad input; the session is unchanged; close the socket with `close_code`."""

    error: ProtocolError
    close_code: int


Event: TypeAlias = (
    HelloReceived
    | StepOneReceived
    | StepTwoReceived
    | UpdateReceived
    | AwarenessReceived
    | AwarenessQueried
    | PermissionDenied
    | Synced
    | UpdateRefused
    | ProtocolViolation
)
"""Anything `Session.receive` can return."""

EVENT_TYPES: tuple[type, ...] = (
    HelloReceived,
    StepOneReceived,
    StepTwoReceived,
    UpdateReceived,
    AwarenessReceived,
    AwarenessQueried,
    PermissionDenied,
    Synced,
    UpdateRefused,
    ProtocolViolation,
)
"""The classes making up `Event`, for isinstance checks."""


class Session:
    """One connection's protocol state: frames in, events out; send helpers build frames.

    With `replica_id=None` the session is a plain Yjs peer and never sends a hello.
    """

    def __init__(
        self,
        role: Role,
        *,
        room: str,
        replica_id: str | None,
        capabilities: frozenset[str] = frozenset(),
        peer_read_only: bool = False,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be positive, got {max_message_size}")
        self.role = role
        self.room = room
        self.replica_id = replica_id
        self.capabilities = capabilities
        self.peer_read_only = peer_read_only
        self.max_message_size = max_message_size
        self._state = State.OPEN
        self._peer_hello: Hello | None = None
        self._started = False
        self._hello_frame = self._encode_own_hello(digest=None)

    @property
    def state(self) -> State:
        """Current state (see TRANSITIONS)."""
        return self._state

    @property
    def peer_hello(self) -> Hello | None:
        """The peer's hello, or None while it has sent none (always, for a plain Yjs peer)."""
        return self._peer_hello

    @property
    def synced(self) -> bool:
        """True once the peer's step 2 has arrived."""
        return self._state is State.SYNCED

    def start(self, state_vector: bytes, *, digest: bytes | None = None) -> list[bytes]:
        """Opening frames: a dialing agentstate node sends hello then step 1, others step 1.

        `digest`, if given, is carried in every hello this session sends.
        """
        if self._started:
            raise SessionUsageError("start() was already called")
        hello_frame = self._encode_own_hello(digest)
        self._advance_local(Input.SEND)
        self._started = True
        self._hello_frame = hello_frame
        frames = []
        if self.role is Role.DIALER and hello_frame is not None:
            frames.append(hello_frame)
        frames.append(encode(SyncStep1(state_vector)))
        return frames

    def send_step1(self, state_vector: bytes) -> bytes:
        """A step 1 frame, for a resync that repairs lost updates."""
        return self._send(SyncStep1(state_vector))

    def send_step2(self, update: bytes) -> bytes:
        """The step 2 frame answering the peer's step 1 (`update` = doc.get_update(its vector))."""
        return self._send(SyncStep2(update))

    def send_update(self, update: bytes) -> bytes:
        """An update frame; merge small updates first, a frame carries one message."""
        return self._send(SyncUpdate(update))

    def send_awareness(self, payload: bytes) -> bytes:
        """An awareness frame carrying an encoded awareness update."""
        return self._send(Awareness(payload))

    def send_query_awareness(self) -> bytes:
        """A frame asking the peer for every awareness state it knows."""
        return self._send(QueryAwareness())

    def deny(self, reason: str) -> bytes:
        """A permission-denied frame (y-protocols auth); close with a 44xx code after it."""
        return self._send(AuthPermissionDenied(reason))

    def close(self) -> None:
        """Mark the session closed (idempotent); the caller closes the socket."""
        self._advance_local(Input.CLOSE)

    def receive(self, frame: bytes | str) -> list[Event]:
        """Process one received frame; never raises, never changes state on bad input.

        A text frame (str) is a violation. Frames received after `close()` are dropped.
        """
        if self._state is State.CLOSED:
            return []
        if not isinstance(frame, (bytes, bytearray, memoryview)):
            return [_violation(f"expected a binary frame, got {type(frame).__name__}")]
        if len(frame) > self.max_message_size:
            error = ProtocolError(
                f"frame of {len(frame)} bytes exceeds the limit of {self.max_message_size}",
                closecodes.FRAME_TOO_BIG,
            )
            return [ProtocolViolation(error, error.close_code)]
        try:
            message = decode(frame)
        except ProtocolError as error:
            return [ProtocolViolation(error, error.close_code)]
        return self._handle(message)

    def _handle(self, message: Message) -> list[Event]:
        """Check `message` against the table and the session's policy, then apply it."""
        kind = _INPUT_OF_MESSAGE[type(message)]
        next_state = TRANSITIONS.get((self._state, kind))
        if next_state is None:
            return [
                _violation(f"{kind.value} message not allowed in state {self._state.value}")
            ]
        if isinstance(message, Hello) and self.room not in message.rooms:
            return [
                _violation(
                    f"peer hello names {len(message.rooms)} room(s), none of them {self.room!r}",
                    closecodes.ROOM_MISMATCH,
                )
            ]
        if (
            isinstance(message, (SyncStep2, SyncUpdate))
            and self.peer_read_only
            and message.update != EMPTY_UPDATE
        ):
            reply = encode(AuthPermissionDenied(READ_ONLY_REASON))
            return [UpdateRefused(READ_ONLY_REASON, reply)]
        events = self._events_for(message)
        if next_state is State.SYNCED and self._state is not State.SYNCED:
            events.append(Synced())
        if isinstance(message, Hello):
            self._peer_hello = message
        self._state = next_state
        return events

    def _events_for(self, message: Message) -> list[Event]:
        """The events an accepted message produces (before any Synced)."""
        match message:
            case Hello():
                reply = self._hello_frame if self.role is Role.LISTENER else None
                return [HelloReceived(message, reply)]
            case SyncStep1(state_vector=state_vector):
                return [StepOneReceived(state_vector)]
            case SyncStep2(update=update):
                return [StepTwoReceived(update)]
            case SyncUpdate(update=update):
                return [UpdateReceived(update)]
            case Awareness(payload=payload):
                return [AwarenessReceived(payload)]
            case QueryAwareness():
                return [AwarenessQueried()]
            case AuthPermissionDenied(reason=reason):
                return [PermissionDenied(reason)]
        raise AssertionError(f"unhandled message {message!r}")

    def _send(self, message: Message) -> bytes:
        """Encode `message` if the state allows sending."""
        self._advance_local(Input.SEND)
        return encode(message)

    def _advance_local(self, kind: Input) -> None:
        """Apply a local input, raising SessionUsageError if the table forbids it."""
        next_state = TRANSITIONS.get((self._state, kind))
        if next_state is None:
            raise SessionUsageError(f"cannot {kind.value} in state {self._state.value}")
        self._state = next_state

    def _encode_own_hello(self, digest: bytes | None) -> bytes | None:
        """Our hello frame, or None in plain Yjs mode; ValueError if a field is invalid."""
        if self.replica_id is None:
            return None
        hello = Hello(
            protocol_version=PROTOCOL_VERSION,
            replica_id=self.replica_id,
            rooms=[self.room],
            capabilities=self.capabilities,
            digest=digest,
        )
        return encode(hello)


def _violation(message: str, close_code: int = closecodes.PROTOCOL_ERROR) -> ProtocolViolation:
    """A ProtocolViolation event for a message that decoded but is not acceptable now."""
    return ProtocolViolation(ProtocolError(message, close_code), close_code)
