"""Session state machine: two sessions wired back to back over real pycrdt Docs, no sockets."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map, create_sync_message, handle_sync_message

from transport import closecodes
from transport.messages import (
    EMPTY_UPDATE,
    PROTOCOL_VERSION,
    AuthPermissionDenied,
    Awareness,
    AwarenessEntry,
    Hello,
    Message,
    MessageType,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    decode,
    decode_state_vector,
    encode,
    encode_awareness_update,
)
from transport.session import (
    EVENT_TYPES,
    TRANSITIONS,
    AwarenessQueried,
    AwarenessReceived,
    Event,
    HelloReceived,
    Input,
    PermissionDenied,
    ProtocolViolation,
    Role,
    Session,
    SessionUsageError,
    State,
    StepOneReceived,
    StepTwoReceived,
    Synced,
    UpdateReceived,
    UpdateRefused,
)
from transport.wire import encode_var_bytes

ROOM = "project/board"
FUZZ_EXAMPLES = int(os.environ.get("AGENTSTATE_FUZZ_EXAMPLES", "500"))


@dataclass
class Endpoint:
    """One side of a SessionPair: a session, the Doc it serves, frames it sent, events it got."""

    name: str
    session: Session
    doc: Doc = field(default_factory=Doc)
    outbox: list[bytes] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def tasks(self) -> Map:
        """The root map the tests write to."""
        return self.doc.get("tasks", type=Map)

    def content(self) -> dict[str, Any]:
        """The tasks map as plain Python."""
        return self.tasks.to_py() or {}

    def state_vector(self) -> dict[int, int]:
        """The Doc's state vector, parsed (byte order of entries may differ between Docs)."""
        return decode_state_vector(self.doc.get_state())


class SessionPair:
    """Two sessions back to back; each side reacts to its events as a replica would."""

    def __init__(self, dialer: Session, listener: Session) -> None:
        self.dialer = Endpoint("dialer", dialer)
        self.listener = Endpoint("listener", listener)
        self.trace: list[tuple[str, type]] = []

    def peer_of(self, endpoint: Endpoint) -> Endpoint:
        """The other side."""
        return self.listener if endpoint is self.dialer else self.dialer

    def start(self) -> None:
        """Queue both sides' opening frames."""
        for endpoint in (self.dialer, self.listener):
            endpoint.outbox.extend(endpoint.session.start(endpoint.doc.get_state()))

    def write(self, endpoint: Endpoint, key: str, value: Any) -> bytes:
        """A local write on `endpoint`, queued to its peer as one update frame."""
        before = endpoint.doc.get_state()
        endpoint.tasks[key] = value
        frame = endpoint.session.send_update(endpoint.doc.get_update(before))
        endpoint.outbox.append(frame)
        return frame

    def deliver(self, sender: Endpoint, frame: bytes | None = None) -> list[Event]:
        """Hand `frame` (default: the oldest queued one) from `sender` to its peer."""
        if frame is None:
            frame = sender.outbox.pop(0)
        receiver = self.peer_of(sender)
        self.trace.append((sender.name, type(decode(frame))))
        events = receiver.session.receive(frame)
        receiver.events.extend(events)
        self._react(receiver, events)
        return events

    def run(self, max_frames: int = 200) -> None:
        """Deliver queued frames, alternating sides, until both outboxes are empty."""
        for _ in range(max_frames):
            if not self.dialer.outbox and not self.listener.outbox:
                return
            for endpoint in (self.dialer, self.listener):
                if endpoint.outbox:
                    self.deliver(endpoint)
        raise AssertionError("frames still flowing after max_frames deliveries")

    def converged(self) -> bool:
        """Same state vector and same content on both Docs."""
        return (
            self.dialer.state_vector() == self.listener.state_vector()
            and self.dialer.content() == self.listener.content()
        )

    def violations(self) -> list[ProtocolViolation]:
        """Every ProtocolViolation either side reported."""
        return [
            e
            for e in self.dialer.events + self.listener.events
            if isinstance(e, ProtocolViolation)
        ]

    @staticmethod
    def _react(endpoint: Endpoint, events: list[Event]) -> None:
        """Do what a replica does with each event: answer, apply, reply."""
        for event in events:
            match event:
                case HelloReceived(reply_frame=reply) if reply is not None:
                    endpoint.outbox.append(reply)
                case StepOneReceived(state_vector=state_vector):
                    update = endpoint.doc.get_update(state_vector)
                    endpoint.outbox.append(endpoint.session.send_step2(update))
                case StepTwoReceived(update=update) | UpdateReceived(update=update):
                    endpoint.doc.apply_update(update)
                case UpdateRefused(reply_frame=reply):
                    endpoint.outbox.append(reply)


def agentstate_pair(*, listener_read_only: bool = False) -> SessionPair:
    """A dialer 'alice' and a listener 'bob', both agentstate nodes in ROOM."""
    return SessionPair(
        Session(Role.DIALER, room=ROOM, replica_id="alice", capabilities=frozenset({"x"})),
        Session(
            Role.LISTENER, room=ROOM, replica_id="bob", peer_read_only=listener_read_only
        ),
    )


def test_agentstate_handshake_order_and_states() -> None:
    pair = agentstate_pair()
    pair.start()
    assert [type(decode(f)) for f in pair.dialer.outbox] == [Hello, SyncStep1]
    assert [type(decode(f)) for f in pair.listener.outbox] == [SyncStep1]
    pair.run()
    dialer_sent = [kind for sender, kind in pair.trace if sender == "dialer"]
    listener_sent = [kind for sender, kind in pair.trace if sender == "listener"]
    assert dialer_sent == [Hello, SyncStep1, SyncStep2]
    assert listener_sent == [SyncStep1, Hello, SyncStep2]
    assert pair.dialer.session.state is State.SYNCED
    assert pair.listener.session.state is State.SYNCED
    assert pair.dialer.session.peer_hello == Hello(PROTOCOL_VERSION, "bob", [ROOM], frozenset())
    assert pair.listener.session.peer_hello == Hello(
        PROTOCOL_VERSION, "alice", [ROOM], frozenset({"x"})
    )
    assert sum(isinstance(e, Synced) for e in pair.dialer.events) == 1
    assert sum(isinstance(e, Synced) for e in pair.listener.events) == 1
    assert not pair.violations()


def test_start_carries_digest_in_hello_and_reply() -> None:
    pair = agentstate_pair()
    pair.dialer.session.start(b"\x00", digest=b"d1")
    hello_frame = encode(Hello(PROTOCOL_VERSION, "alice", [ROOM], frozenset({"x"}), b"d1"))
    pair.listener.session.start(b"\x00", digest=b"d2")
    [event] = pair.listener.session.receive(hello_frame)
    assert isinstance(event, HelloReceived)
    assert event.hello.digest == b"d1"
    assert event.reply_frame is not None
    reply = decode(event.reply_frame)
    assert isinstance(reply, Hello) and reply.digest == b"d2"


def test_divergent_docs_converge_in_one_exchange() -> None:
    pair = agentstate_pair()
    pair.dialer.tasks["t1"] = "offline on dialer ✓"
    pair.listener.tasks["t2"] = "écrit hors ligne"
    assert not pair.converged()
    pair.start()
    pair.run()
    assert pair.converged()
    assert pair.dialer.content() == {"t1": "offline on dialer ✓", "t2": "écrit hors ligne"}
    assert not pair.violations()


def test_live_updates_both_ways_and_concurrent_writes_converge() -> None:
    pair = agentstate_pair()
    pair.start()
    pair.run()
    pair.write(pair.dialer, "a", 1)
    pair.write(pair.listener, "b", 2)
    pair.write(pair.dialer, "same", "dialer")
    pair.write(pair.listener, "same", "listener")
    pair.run()
    assert pair.converged()
    assert pair.dialer.content()["a"] == 1 and pair.dialer.content()["b"] == 2
    assert pair.dialer.content()["same"] in {"dialer", "listener"}
    assert not pair.violations()


def test_duplicated_updates_are_harmless() -> None:
    pair = agentstate_pair()
    pair.start()
    pair.run()
    frames = [pair.write(pair.dialer, f"k{i}", i) for i in range(3)]
    pair.dialer.outbox.clear()
    for frame in frames + frames + [frames[1]]:
        events = pair.deliver(pair.dialer, frame)
        assert [type(e) for e in events] == [UpdateReceived]
    assert pair.converged()
    assert pair.listener.content() == {"k0": 0, "k1": 1, "k2": 2}


def test_reordered_updates_converge_once_all_arrive() -> None:
    pair = agentstate_pair()
    pair.start()
    pair.run()
    frames = [pair.write(pair.dialer, "counter", i) for i in range(4)]
    pair.dialer.outbox.clear()
    for frame in reversed(frames[1:]):
        pair.deliver(pair.dialer, frame)
    assert pair.listener.content() == {}
    pair.deliver(pair.dialer, frames[0])
    assert pair.converged()
    assert pair.listener.content() == {"counter": 3}


def test_dropped_update_is_repaired_by_a_later_step1_step2_exchange() -> None:
    pair = agentstate_pair()
    pair.start()
    pair.run()
    pair.write(pair.dialer, "lost", "never delivered")
    pair.dialer.outbox.clear()
    pair.write(pair.dialer, "later", "depends on the lost one")
    pair.write(pair.listener, "other", "from listener")
    pair.run()
    assert not pair.converged()
    assert "lost" not in pair.listener.content()
    pair.listener.outbox.append(
        pair.listener.session.send_step1(pair.listener.doc.get_state())
    )
    pair.run()
    assert pair.converged()
    assert pair.listener.content()["lost"] == "never delivered"
    assert pair.listener.content()["later"] == "depends on the lost one"
    assert sum(isinstance(e, Synced) for e in pair.dialer.events) == 1
    assert not pair.violations()


def test_plain_yjs_dialer_is_served_without_hello() -> None:
    pair = SessionPair(
        Session(Role.DIALER, room=ROOM, replica_id=None),
        Session(Role.LISTENER, room=ROOM, replica_id="bob"),
    )
    pair.dialer.tasks["from_plain"] = "yjs"
    pair.listener.tasks["from_node"] = "agentstate"
    pair.start()
    pair.run()
    pair.write(pair.dialer, "later", 1)
    pair.run()
    assert Hello not in [kind for _, kind in pair.trace]
    assert not any(isinstance(e, HelloReceived) for e in pair.listener.events)
    assert pair.listener.session.peer_hello is None
    assert pair.dialer.session.state is State.SYNCED
    assert pair.listener.session.state is State.SYNCED
    assert pair.converged()


def test_pycrdt_plain_client_synced_by_listener_session() -> None:
    """A client driven by pycrdt's own y-protocols helpers, as pycrdt's Provider does."""
    client_doc = Doc()
    client_doc.get("tasks", type=Map)["c"] = "from pycrdt client"
    listener = Endpoint("listener", Session(Role.LISTENER, room=ROOM, replica_id="bob"))
    listener.tasks["s"] = "from listener"
    to_client = listener.session.start(listener.doc.get_state())
    to_listener = [create_sync_message(client_doc)]
    for _ in range(10):
        while to_client:
            reply = handle_sync_message(to_client.pop(0)[1:], client_doc)
            if reply is not None:
                to_listener.append(reply)
        while to_listener:
            events = listener.session.receive(to_listener.pop(0))
            listener.events.extend(events)
            SessionPair._react(listener, events)
            to_client.extend(listener.outbox)
            listener.outbox.clear()
    assert not any(isinstance(e, (ProtocolViolation, HelloReceived)) for e in listener.events)
    assert listener.session.state is State.SYNCED
    assert client_doc.get("tasks", type=Map).to_py() == listener.content()
    assert listener.content() == {"c": "from pycrdt client", "s": "from listener"}


def test_agentstate_dialer_syncs_with_server_that_ignores_hello() -> None:
    """Like pycrdt's YRoom or y-websocket: unknown message types are skipped."""
    server_doc = Doc()
    server_doc.get("tasks", type=Map)["s"] = "server"
    dialer = Endpoint("dialer", Session(Role.DIALER, room=ROOM, replica_id="alice"))
    dialer.tasks["d"] = "dialer"
    to_server = dialer.session.start(dialer.doc.get_state())
    to_dialer = [create_sync_message(server_doc)]
    for _ in range(10):
        while to_server:
            frame = to_server.pop(0)
            if frame[0] == MessageType.SYNC:
                reply = handle_sync_message(frame[1:], server_doc)
                if reply is not None:
                    to_dialer.append(reply)
        while to_dialer:
            events = dialer.session.receive(to_dialer.pop(0))
            dialer.events.extend(events)
            SessionPair._react(dialer, events)
            to_server.extend(dialer.outbox)
            dialer.outbox.clear()
    assert dialer.session.state is State.SYNCED
    assert dialer.session.peer_hello is None
    assert not any(isinstance(e, ProtocolViolation) for e in dialer.events)
    assert server_doc.get("tasks", type=Map).to_py() == dialer.content() == {
        "s": "server",
        "d": "dialer",
    }


def test_read_only_peer_updates_refused_and_state_unchanged() -> None:
    pair = agentstate_pair(listener_read_only=True)
    pair.listener.tasks["board"] = "owned by listener"
    pair.start()
    pair.run()
    assert pair.dialer.content() == {"board": "owned by listener"}
    assert pair.dialer.session.state is State.SYNCED

    listener_state = pair.listener.session.state
    listener_sv = pair.listener.state_vector()
    frame = pair.write(pair.dialer, "board", "vandalised")
    pair.dialer.outbox.clear()
    events = pair.deliver(pair.dialer, frame)
    assert [type(e) for e in events] == [UpdateRefused]
    [refused] = events
    assert isinstance(refused, UpdateRefused)
    assert decode(refused.reply_frame) == AuthPermissionDenied(refused.reason)
    assert pair.listener.session.state is listener_state
    assert pair.listener.state_vector() == listener_sv
    assert pair.listener.content() == {"board": "owned by listener"}

    pair.run()
    denied = [e for e in pair.dialer.events if isinstance(e, PermissionDenied)]
    assert [d.reason for d in denied] == [refused.reason]

    pair.write(pair.listener, "news", "listener can still write to readers")
    pair.run()
    assert pair.dialer.content()["news"] == "listener can still write to readers"
    assert not pair.violations()


def test_read_only_peer_with_nothing_to_send_gets_synced() -> None:
    pair = agentstate_pair(listener_read_only=True)
    pair.listener.tasks["t"] = 1
    pair.start()
    pair.run()
    assert pair.listener.session.state is State.SYNCED
    assert not any(isinstance(e, UpdateRefused) for e in pair.listener.events)
    assert pair.converged()


def test_read_only_peer_with_offline_writes_is_refused_and_never_synced() -> None:
    pair = agentstate_pair(listener_read_only=True)
    pair.dialer.tasks["offline"] = "write"
    pair.start()
    pair.run()
    assert any(isinstance(e, UpdateRefused) for e in pair.listener.events)
    assert "offline" not in pair.listener.content()
    assert pair.listener.session.state is State.GREETED
    assert pair.dialer.session.state is State.SYNCED


# --- the state table, input by input --------------------------------------------------

HELLO_FRAME = encode(Hello(PROTOCOL_VERSION, "peer", [ROOM], frozenset()))
STEP1_FRAME = encode(SyncStep1(b"\x00"))


def _content_update() -> bytes:
    """A non-empty update from a fresh Doc."""
    doc = Doc()
    doc.get("tasks", type=Map)["x"] = "y"
    return doc.get_update()


REPRESENTATIVE_FRAMES: dict[Input, bytes] = {
    Input.HELLO: HELLO_FRAME,
    Input.STEP1: STEP1_FRAME,
    Input.STEP2: encode(SyncStep2(_content_update())),
    Input.UPDATE: encode(SyncUpdate(_content_update())),
    Input.AWARENESS: encode(
        Awareness(encode_awareness_update([AwarenessEntry(7, 1, {"user": "z"})]))
    ),
    Input.QUERY_AWARENESS: encode(QueryAwareness()),
    Input.PERMISSION_DENIED: encode(AuthPermissionDenied("no")),
}

PEER_INPUTS = list(REPRESENTATIVE_FRAMES)

DRIVE_TO: dict[State, list[bytes]] = {
    State.OPEN: [],
    State.SYNCING: [STEP1_FRAME],
    State.GREETED: [HELLO_FRAME],
    State.SYNCED: [encode(SyncStep2(EMPTY_UPDATE))],
    State.CLOSED: [],
}


def session_in(
    state: State,
    *,
    role: Role = Role.LISTENER,
    replica_id: str | None = "me",
    read_only: bool = False,
    max_message_size: int = 1 << 20,
) -> Session:
    """A started session driven into `state` by valid frames, then given `max_message_size`."""
    session = Session(
        role,
        room=ROOM,
        replica_id=replica_id,
        peer_read_only=read_only,
    )
    session.start(b"\x00")
    for frame in DRIVE_TO[state]:
        session.receive(frame)
    if state is State.CLOSED:
        session.close()
    assert session.state is state
    session.max_message_size = max_message_size
    return session


@pytest.mark.parametrize("state", [s for s in State if s is not State.CLOSED])
@pytest.mark.parametrize("peer_input", PEER_INPUTS)
def test_receive_follows_the_table(state: State, peer_input: Input) -> None:
    session = session_in(state)
    events = session.receive(REPRESENTATIVE_FRAMES[peer_input])
    expected = TRANSITIONS.get((state, peer_input))
    if expected is None:
        assert [type(e) for e in events] == [ProtocolViolation]
        assert session.state is state
    else:
        assert not any(isinstance(e, ProtocolViolation) for e in events)
        assert session.state is expected


EXPECTED_EVENTS: dict[Input, list[type]] = {
    Input.HELLO: [HelloReceived],
    Input.STEP1: [StepOneReceived],
    Input.STEP2: [StepTwoReceived, Synced],
    Input.UPDATE: [UpdateReceived],
    Input.AWARENESS: [AwarenessReceived],
    Input.QUERY_AWARENESS: [AwarenessQueried],
    Input.PERMISSION_DENIED: [PermissionDenied],
}


@pytest.mark.parametrize("peer_input", PEER_INPUTS)
def test_each_input_in_open_state_yields_its_event(peer_input: Input) -> None:
    events = session_in(State.OPEN).receive(REPRESENTATIVE_FRAMES[peer_input])
    assert [type(e) for e in events] == EXPECTED_EVENTS[peer_input]


def test_second_hello_is_a_violation() -> None:
    session = session_in(State.GREETED)
    first = session.peer_hello
    [event] = session.receive(encode(Hello(PROTOCOL_VERSION, "other", [ROOM], frozenset())))
    assert isinstance(event, ProtocolViolation)
    assert event.close_code == closecodes.PROTOCOL_ERROR
    assert "hello message not allowed in state greeted" in str(event.error)
    assert session.peer_hello is first and session.state is State.GREETED


def test_hello_after_synced_is_a_violation() -> None:
    session = session_in(State.SYNCED)
    [event] = session.receive(HELLO_FRAME)
    assert isinstance(event, ProtocolViolation)
    assert session.peer_hello is None and session.state is State.SYNCED


def test_hello_may_follow_sync_traffic() -> None:
    session = session_in(State.SYNCING, role=Role.DIALER)
    [event] = session.receive(HELLO_FRAME)
    assert isinstance(event, HelloReceived) and event.reply_frame is None
    assert session.state is State.GREETED


def test_synced_is_emitted_once() -> None:
    session = session_in(State.OPEN)
    step2 = encode(SyncStep2(EMPTY_UPDATE))
    assert [type(e) for e in session.receive(step2)] == [StepTwoReceived, Synced]
    assert [type(e) for e in session.receive(step2)] == [StepTwoReceived]
    assert session.synced


def test_plain_listener_does_not_answer_hello() -> None:
    session = session_in(State.OPEN, replica_id=None)
    [event] = session.receive(HELLO_FRAME)
    assert isinstance(event, HelloReceived) and event.reply_frame is None


def test_hello_for_another_room_is_refused() -> None:
    session = session_in(State.OPEN)
    [event] = session.receive(encode(Hello(PROTOCOL_VERSION, "p", ["elsewhere"], frozenset())))
    assert isinstance(event, ProtocolViolation)
    assert event.close_code == closecodes.ROOM_MISMATCH
    assert session.state is State.OPEN and session.peer_hello is None


def test_unsupported_version_is_refused_with_4426() -> None:
    session = session_in(State.OPEN)
    [event] = session.receive(encode(Hello(PROTOCOL_VERSION + 1, "p", [ROOM], frozenset())))
    assert isinstance(event, ProtocolViolation)
    assert event.close_code == closecodes.UNSUPPORTED_VERSION
    assert session.state is State.OPEN


def test_oversized_frame_is_refused_with_4413() -> None:
    session = session_in(State.OPEN, max_message_size=16)
    [event] = session.receive(encode(SyncUpdate(b"\x00" * 32)))
    assert isinstance(event, ProtocolViolation)
    assert event.close_code == closecodes.FRAME_TOO_BIG
    assert session.state is State.OPEN
    assert session.receive(STEP1_FRAME) == [StepOneReceived(b"\x00")]


def test_garbage_is_a_violation_with_4400() -> None:
    session = session_in(State.SYNCED)
    [event] = session.receive(b"\x07garbage")
    assert isinstance(event, ProtocolViolation)
    assert event.close_code == closecodes.PROTOCOL_ERROR
    assert session.state is State.SYNCED


def test_text_frame_is_a_violation() -> None:
    session = session_in(State.OPEN)
    [event] = session.receive("\x00\x00\x01\x00")
    assert isinstance(event, ProtocolViolation)
    assert event.close_code == closecodes.PROTOCOL_ERROR
    assert session.state is State.OPEN
    assert session.receive(bytearray(STEP1_FRAME)) == [StepOneReceived(b"\x00")]


def test_closed_session_drops_frames_and_refuses_sends() -> None:
    session = session_in(State.SYNCED)
    session.close()
    session.close()
    assert session.state is State.CLOSED
    assert session.receive(STEP1_FRAME) == []
    with pytest.raises(SessionUsageError):
        session.send_update(EMPTY_UPDATE)
    with pytest.raises(SessionUsageError):
        session.deny("x")


def test_start_twice_is_a_usage_error() -> None:
    session = session_in(State.OPEN)
    with pytest.raises(SessionUsageError):
        session.start(b"\x00")


def test_plain_dialer_start_sends_only_step1() -> None:
    session = Session(Role.DIALER, room=ROOM, replica_id=None)
    assert session.start(b"\x00") == [encode(SyncStep1(b"\x00"))]


def test_send_helpers_produce_one_message_per_frame() -> None:
    session = session_in(State.SYNCED)
    payload = encode_awareness_update([AwarenessEntry(1, 1, {"a": 1})])
    assert decode(session.send_step1(b"\x00")) == SyncStep1(b"\x00")
    assert decode(session.send_step2(EMPTY_UPDATE)) == SyncStep2(EMPTY_UPDATE)
    assert decode(session.send_update(EMPTY_UPDATE)) == SyncUpdate(EMPTY_UPDATE)
    assert decode(session.send_awareness(payload)) == Awareness(payload)
    assert decode(session.send_query_awareness()) == QueryAwareness()
    assert decode(session.deny("nope ✋")) == AuthPermissionDenied("nope ✋")


def test_invalid_own_fields_fail_before_any_frame() -> None:
    with pytest.raises(ValueError):
        Session(Role.DIALER, room=ROOM, replica_id="")
    with pytest.raises(ValueError):
        Session(Role.LISTENER, room="", replica_id="me")
    session = Session(Role.LISTENER, room=ROOM, replica_id="me")
    with pytest.raises(ValueError):
        session.start(b"\x00", digest=b"x" * 65)
    assert session.start(b"\x00") == [STEP1_FRAME]


def test_close_codes_for_refusals_are_permanent() -> None:
    for code in (
        closecodes.PROTOCOL_ERROR,
        closecodes.UNAUTHORIZED,
        closecodes.FORBIDDEN,
        closecodes.ROOM_MISMATCH,
        closecodes.FRAME_TOO_BIG,
        closecodes.UNSUPPORTED_VERSION,
        closecodes.RATE_LIMITED,
    ):
        assert closecodes.is_permanent(code)
        assert len(closecodes.REASONS[code].encode()) < 123
    for code in (closecodes.GOING_AWAY, closecodes.TRY_AGAIN_LATER, 1009, 1006):
        assert not closecodes.is_permanent(code)


# --- fuzz --------------------------------------------------------------------------------

VALID_FRAMES = list(REPRESENTATIVE_FRAMES.values()) + [
    encode(SyncStep2(EMPTY_UPDATE)),
    encode(SyncUpdate(EMPTY_UPDATE)),
    encode(Hello(PROTOCOL_VERSION, "peer", ["elsewhere"], frozenset())),
    encode(Hello(PROTOCOL_VERSION + 1, "peer", [ROOM], frozenset())),
    b"\x61" + encode_var_bytes(b"\x81\xa1v\x01"),
]


def _mutate(frame: bytes) -> st.SearchStrategy[bytes]:
    """`frame` itself, or truncated, extended, with a byte replaced or bytes inserted."""
    positions = st.integers(min_value=0, max_value=max(len(frame) - 1, 0))
    return st.one_of(
        st.just(frame),
        positions.map(lambda i: frame[:i]),
        st.binary(min_size=1, max_size=4).map(lambda tail: frame + tail),
        st.tuples(positions, st.integers(0, 255)).map(
            lambda p: frame[: p[0]] + bytes([p[1]]) + frame[p[0] + 1 :]
        ),
        st.tuples(positions, st.binary(min_size=1, max_size=6)).map(
            lambda p: frame[: p[0]] + p[1] + frame[p[0] :]
        ),
    )


session_frames = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(VALID_FRAMES).flatmap(_mutate),
    st.sampled_from([b"\x00\x00", b"\x00\x01", b"\x00\x02", b"\x01", b"\x02\x00", b"a"]).flatmap(
        lambda head: st.binary(max_size=24).map(lambda tail: head + tail)
    ),
)

_INPUT_OF: dict[type, Input] = {
    Hello: Input.HELLO,
    SyncStep1: Input.STEP1,
    SyncStep2: Input.STEP2,
    SyncUpdate: Input.UPDATE,
    Awareness: Input.AWARENESS,
    QueryAwareness: Input.QUERY_AWARENESS,
    AuthPermissionDenied: Input.PERMISSION_DENIED,
}


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    start_state=st.sampled_from(list(State)),
    role=st.sampled_from(list(Role)),
    replica_id=st.sampled_from(["me", None]),
    read_only=st.booleans(),
    max_message_size=st.sampled_from([24, 1 << 20]),
    frames=st.lists(session_frames, min_size=1, max_size=12),
)
def test_fuzz_receive_never_raises_and_rejects_without_state_change(
    start_state: State,
    role: Role,
    replica_id: str | None,
    read_only: bool,
    max_message_size: int,
    frames: list[bytes],
) -> None:
    session = session_in(
        start_state,
        role=role,
        replica_id=replica_id,
        read_only=read_only,
        max_message_size=max_message_size,
    )
    for frame in frames:
        before = (session.state, session.peer_hello)
        events = session.receive(frame)
        assert isinstance(events, list)
        assert all(isinstance(e, EVENT_TYPES) for e in events)
        if before[0] is State.CLOSED:
            assert events == []
            continue
        rejections = [e for e in events if isinstance(e, (ProtocolViolation, UpdateRefused))]
        if rejections:
            assert events == rejections and len(events) == 1
            assert (session.state, session.peer_hello) == before
            if isinstance(events[0], ProtocolViolation):
                assert closecodes.is_permanent(events[0].close_code)
            else:
                assert read_only
            continue
        message: Message = decode(frame)
        assert len(frame) <= max_message_size
        assert session.state is TRANSITIONS[(before[0], _INPUT_OF[type(message)])]
        assert events, "an accepted frame always yields an event"
