"""Messages: round trips, byte-for-byte agreement with pycrdt's y-protocols code, totality."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pycrdt import Awareness as PycrdtAwareness
from pycrdt import Doc, Map, Text
from pycrdt import (
    create_awareness_message,
    create_sync_message,
    create_update_message,
    handle_sync_message,
)
from pycrdt._sync import create_sync_step1_message, create_sync_step2_message

from transport import closecodes
from transport.messages import (
    EMPTY_UPDATE,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    AuthPermissionDenied,
    Awareness,
    AwarenessEntry,
    Hello,
    Message,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    decode,
    decode_awareness_update,
    decode_state_vector,
    encode,
    encode_awareness_update,
    encode_state_vector,
)
from transport.wire import ProtocolError, encode_var_bytes, encode_varuint


def _doc_with_content(text: str = "héllo wörld 🦀") -> Doc:
    """A Doc with `text` in a map and in a Text."""
    doc = Doc()
    doc.get("m", type=Map)["task"] = text
    doc.get("t", type=Text).insert(0, text)
    return doc


def _awareness_payload(states: list[tuple[int, int, Any]]) -> bytes:
    """An awareness update from (client id, clock, state) triples."""
    return encode_awareness_update([AwarenessEntry(c, k, s) for c, k, s in states])


def _hello_frame(body: Any) -> bytes:
    """A hello frame around an arbitrary msgpack body."""
    return b"\x61" + encode_var_bytes(msgpack.packb(body, use_bin_type=True))


def _valid_hello_body(**changes: Any) -> dict[str, Any]:
    """A valid hello body with some keys replaced or added."""
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "i": "replica-1", "r": ["room"], "c": []}
    body.update(changes)
    return body


ALL_MESSAGES: list[Message] = [
    SyncStep1(b"\x00"),
    SyncStep1(encode_state_vector({1: 5, 2**32: 7, 2**53 - 1: 0})),
    SyncStep2(EMPTY_UPDATE),
    SyncStep2(_doc_with_content().get_update()),
    SyncUpdate(_doc_with_content("ñ").get_update()),
    Awareness(_awareness_payload([(1, 2, {"user": "Zoë", "task": "日本"}), (3, 4, None)])),
    Awareness(b"\x00"),
    AuthPermissionDenied(""),
    AuthPermissionDenied("lecture seule: écriture refusée ✋"),
    QueryAwareness(),
    Hello(PROTOCOL_VERSION, "réplica-é", ["room", "pièce/日本"], frozenset({"digest", "z"})),
    Hello(PROTOCOL_VERSION, "r", [], frozenset(), digest=b"\x00" * 32),
]


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Message) -> None:
    assert decode(encode(message)) == message


def test_message_types_cover_every_message_class() -> None:
    assert {type(m) for m in ALL_MESSAGES} == set(MESSAGE_TYPES)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (SyncStep1(b"\x00"), b"\x00\x00\x01\x00"),
        (SyncStep2(EMPTY_UPDATE), b"\x00\x01\x02\x00\x00"),
        (SyncUpdate(EMPTY_UPDATE), b"\x00\x02\x02\x00\x00"),
        (Awareness(b"\x00"), b"\x01\x01\x00"),
        (AuthPermissionDenied("é"), b"\x02\x00\x02\xc3\xa9"),
        (QueryAwareness(), b"\x03"),
    ],
)
def test_known_bytes(message: Message, expected: bytes) -> None:
    assert encode(message) == expected


def test_hello_layout_is_type_0x61_then_msgpack_map() -> None:
    hello = Hello(PROTOCOL_VERSION, "a", ["r"], frozenset({"y", "x"}), b"\x01")
    frame = encode(hello)
    assert frame[0] == 0x61
    body = frame[2:]
    assert frame[1] == len(body)
    assert msgpack.unpackb(body) == {"v": 1, "i": "a", "r": ["r"], "c": ["x", "y"], "d": b"\x01"}
    assert "d" not in msgpack.unpackb(encode(Hello(1, "a", ["r"], frozenset()))[2:])


def test_pycrdt_sync_messages_decode() -> None:
    doc = _doc_with_content()
    step1 = decode(create_sync_message(doc))
    assert step1 == SyncStep1(doc.get_state())
    update = doc.get_update()
    assert decode(create_update_message(update)) == SyncUpdate(update)
    assert decode(create_sync_step2_message(update)) == SyncStep2(update)


def test_our_sync_messages_equal_pycrdt_bytes() -> None:
    doc = _doc_with_content()
    state, update = doc.get_state(), doc.get_update()
    assert encode(SyncStep1(state)) == create_sync_message(doc)
    assert encode(SyncStep1(state)) == create_sync_step1_message(state)
    assert encode(SyncStep2(update)) == create_sync_step2_message(update)
    assert encode(SyncUpdate(update)) == create_update_message(update)


def test_pycrdt_handles_our_sync_messages() -> None:
    source = _doc_with_content()
    target = Doc()
    reply = handle_sync_message(encode(SyncStep1(target.get_state()))[1:], source)
    assert reply is not None
    step2 = decode(reply)
    assert isinstance(step2, SyncStep2)
    assert handle_sync_message(encode(step2)[1:], target) is None
    assert target.get("m", type=Map).to_py() == {"task": "héllo wörld 🦀"}
    assert str(target.get("t", type=Text)) == "héllo wörld 🦀"


def test_pycrdt_awareness_messages_decode_and_ours_apply() -> None:
    awareness = PycrdtAwareness(Doc())
    awareness.set_local_state({"user": "Zoë", "doing": "task-7 ✓"})
    inner = awareness.encode_awareness_update([awareness.client_id])
    message = decode(create_awareness_message(inner))
    assert message == Awareness(inner)
    [entry] = decode_awareness_update(message.payload)
    assert entry.client_id == awareness.client_id
    assert entry.state == {"user": "Zoë", "doing": "task-7 ✓"}

    ours = _awareness_payload([(42, 3, {"user": "Zoë ✓", "online": True})])
    assert encode(Awareness(ours)) == create_awareness_message(ours)
    receiver = PycrdtAwareness(Doc())
    receiver.apply_awareness_update(ours, origin="test")
    assert receiver.states[42] == {"user": "Zoë ✓", "online": True}


def test_state_vector_codec_matches_pycrdt() -> None:
    doc = _doc_with_content()
    other = Doc()
    other.get("m", type=Map)["x"] = 1
    doc.apply_update(other.get_update())
    parsed = decode_state_vector(doc.get_state())
    assert set(parsed) == {doc.client_id, other.client_id}
    assert doc.get_update(encode_state_vector(parsed)) == EMPTY_UPDATE
    assert decode_state_vector(encode_state_vector(parsed)) == parsed


def _sync(sub: int, payload: bytes) -> bytes:
    """A sync frame with any sub-type and payload."""
    return b"\x00" + encode_varuint(sub) + encode_var_bytes(payload)


BAD_FRAMES: list[tuple[str, bytes, str]] = [
    ("empty", b"", "truncated"),
    ("unknown type", b"\x04", "unknown message type 4"),
    ("unknown big type", encode_varuint(2**40), "unknown message type"),
    ("unknown sync type", _sync(3, b"\x00"), "unknown sync message type 3"),
    ("trailing bytes", encode(QueryAwareness()) + b"\x00", "trailing"),
    ("trailing after sync", encode(SyncUpdate(EMPTY_UPDATE)) + b"\x01", "trailing"),
    ("truncated payload", encode(SyncUpdate(EMPTY_UPDATE))[:-1], "declares 2 byte"),
    ("update too short", _sync(2, b"\x00"), "shorter than an empty update"),
    ("step2 empty", _sync(1, b""), "shorter than an empty update"),
    ("sv empty", _sync(0, b""), "truncated"),
    ("sv trailing", _sync(0, b"\x00\x00"), "trailing"),
    ("sv truncated pair", _sync(0, b"\x01\x05"), "only 1 byte"),
    ("sv duplicate client", _sync(0, b"\x02\x05\x01\x05\x02"), "twice"),
    ("sv huge count", _sync(0, encode_varuint(2**50)), "claims"),
    ("sv clock too big", _sync(0, b"\x01\x01" + b"\xff" * 7 + b"\x7f"), "exceeds 2**53-1"),
    ("auth unknown", b"\x02\x01\x00", "unknown auth message type 1"),
    ("auth bad utf8", b"\x02\x00\x01\xff", "not valid UTF-8"),
    ("auth truncated", b"\x02\x00", "truncated"),
    ("awareness empty", b"\x01\x00", "truncated"),
    ("awareness bad json", encode(Awareness(b"\x01\x01\x01\x01{")), "not valid JSON"),
    ("awareness empty state", encode(Awareness(b"\x01\x01\x01\x00")), "not valid JSON"),
    ("awareness NaN", encode(Awareness(b"\x01\x01\x01\x03NaN")), "not valid JSON"),
    (
        "awareness deep json",
        encode(Awareness(b"\x01\x01\x01" + encode_var_bytes(b"[" * 100_000))),
        "not valid JSON",
    ),
    ("awareness trailing", encode(Awareness(b"\x00\x00")), "trailing"),
    ("hello not msgpack", b"\x61\x01\xc1", "not valid msgpack"),
    ("hello truncated msgpack", b"\x61\x01\x85", "not valid msgpack"),
    ("hello not a map", _hello_frame([1, 2]), "must be a map"),
    ("hello no version", _hello_frame({"i": "a", "r": [], "c": []}), "protocol version"),
    ("hello bool version", _hello_frame(_valid_hello_body(v=True)), "protocol version"),
    ("hello missing id", _hello_frame({"v": 1, "r": [], "c": []}), "lacks key(s) i"),
    ("hello id not str", _hello_frame(_valid_hello_body(i=7)), "replica id must be a string"),
    ("hello id empty", _hello_frame(_valid_hello_body(i="")), "non-empty"),
    ("hello id control", _hello_frame(_valid_hello_body(i="a\nb")), "printable"),
    ("hello id too long", _hello_frame(_valid_hello_body(i="x" * 129)), "more than 128"),
    ("hello rooms not list", _hello_frame(_valid_hello_body(r="room")), "must be arrays"),
    ("hello rooms dup", _hello_frame(_valid_hello_body(r=["a", "a"])), "not unique"),
    ("hello room bytes", _hello_frame(_valid_hello_body(r=[b"a"])), "room must be a string"),
    ("hello room too long", _hello_frame(_valid_hello_body(r=["x" * 1025])), "more than 1024"),
    ("hello 300 rooms", _hello_frame(_valid_hello_body(r=[str(i) for i in range(300)])), "msgpack"),
    ("hello caps dup", _hello_frame(_valid_hello_body(c=["a", "a"])), "not unique"),
    ("hello caps not str", _hello_frame(_valid_hello_body(c=[[1]])), "must be strings"),
    ("hello digest type", _hello_frame(_valid_hello_body(d="abc")), "digest"),
    ("hello digest big", _hello_frame(_valid_hello_body(d=b"x" * 65)), "digest"),
    ("hello dup key", b"\x61\x04\x82\xa1v\x01\xa1v", "not valid msgpack"),
    ("hello int key", _hello_frame({1: 1}), "not valid msgpack"),
    (
        "hello ext type",
        _hello_frame(_valid_hello_body(i=msgpack.ExtType(5, b"x"))),
        "not valid msgpack",
    ),
    ("hello trailing msgpack", b"\x61\x02\x80\x80", "not valid msgpack"),
    ("hello body too big", b"\x61" + encode_var_bytes(b"\x80" * (64 * 1024 + 1)), "exceeds"),
]


@pytest.mark.parametrize(
    ("frame", "fragment"), [(f, m) for _, f, m in BAD_FRAMES], ids=[n for n, _, _ in BAD_FRAMES]
)
def test_bad_frames_raise_protocol_error(frame: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        decode(frame)
    assert fragment in str(raised.value)
    assert raised.value.close_code == closecodes.PROTOCOL_ERROR


def test_unsupported_hello_version_has_its_own_close_code() -> None:
    with pytest.raises(ProtocolError, match="version 2") as raised:
        decode(encode(Hello(2, "a", ["r"], frozenset())))
    assert raised.value.close_code == closecodes.UNSUPPORTED_VERSION


def test_hello_ignores_unknown_keys_and_nil_digest() -> None:
    hello = decode(_hello_frame(_valid_hello_body(z={"future": [1, 2]}, d=None)))
    assert hello == Hello(PROTOCOL_VERSION, "replica-1", ["room"], frozenset())


@pytest.mark.parametrize(
    "hello",
    [
        Hello(PROTOCOL_VERSION, "", ["r"], frozenset()),
        Hello(PROTOCOL_VERSION, "a", ["r", "r"], frozenset()),
        Hello(PROTOCOL_VERSION, "a", ["r"], frozenset({"x" * 65})),
        Hello(-1, "a", ["r"], frozenset()),
        Hello(PROTOCOL_VERSION, "\ud800", ["r"], frozenset()),
    ],
)
def test_encode_refuses_invalid_hello(hello: Hello) -> None:
    with pytest.raises(ValueError, match="invalid hello"):
        encode(hello)


def test_awareness_codec_keeps_non_ascii_and_null() -> None:
    entries = [AwarenessEntry(1, 1, {"name": "Ωmega"}), AwarenessEntry(2**53 - 1, 9, None)]
    assert decode_awareness_update(encode_awareness_update(entries)) == entries


def _mutations(frame: bytes) -> st.SearchStrategy[bytes]:
    """Frames derived from a valid one: truncated, extended, bytes flipped or spliced."""
    positions = st.integers(min_value=0, max_value=max(len(frame) - 1, 0))
    return st.one_of(
        positions.map(lambda i: frame[:i]),
        st.binary(min_size=1, max_size=8).map(lambda tail: frame + tail),
        st.tuples(positions, st.integers(0, 255)).map(
            lambda p: frame[: p[0]] + bytes([p[1]]) + frame[p[0] + 1 :]
        ),
        st.tuples(positions, st.binary(max_size=8)).map(
            lambda p: frame[: p[0]] + p[1] + frame[p[0] :]
        ),
    )


VALID_FRAMES = [encode(m) for m in ALL_MESSAGES]

fuzz_frames = st.one_of(
    st.binary(max_size=96),
    st.sampled_from(VALID_FRAMES).flatmap(_mutations),
    st.sampled_from([b"\x00", b"\x01", b"\x02", b"\x03", b"\x61"]).flatmap(
        lambda head: st.binary(max_size=32).map(lambda tail: head + tail)
    ),
)


@settings(max_examples=500)
@given(fuzz_frames)
@example(b"\x61\x03\x81\xa1v")
@example(b"\x01\x05\x01\x01\x01\x01\xd8")
def test_decode_is_total_and_canonical(frame: bytes) -> None:
    try:
        message = decode(frame)
    except ProtocolError as error:
        assert str(error)
        return
    assert isinstance(message, MESSAGE_TYPES)
    if not isinstance(message, Hello):
        assert encode(message) == frame


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.integers(0, 2**53 - 1), st.integers(0, 2**53 - 1), max_size=8
    )
)
def test_state_vector_round_trip(state_vector: dict[int, int]) -> None:
    assert decode_state_vector(encode_state_vector(state_vector)) == state_vector


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2**53 - 1),
            st.integers(0, 2**53 - 1),
            st.recursive(
                st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
                lambda inner: st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                max_leaves=6,
            ),
        ),
        max_size=4,
    )
)
def test_awareness_round_trip(states: list[tuple[int, int, Any]]) -> None:
    payload = _awareness_payload(states)
    decoded = decode_awareness_update(payload)
    assert [(e.client_id, e.clock, e.state) for e in decoded] == states
