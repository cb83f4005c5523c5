"""The one varuint / state-vector codec (replica.statevector): what each strictness accepts."""

from __future__ import annotations

import pytest
from pycrdt import Doc, Map

from replica.statevector import (
    MAX_SAFE_INTEGER,
    Strictness,
    VarUintError,
    decode_state_vector,
    encode_state_vector,
    encode_varuint,
    read_varuint,
)
from transport.messages import decode_state_vector as decode_peer_state_vector
from transport.updates import UpdateFormatError, _Cursor, document_digest, state_digest
from transport.wire import ProtocolError, Reader

NON_MINIMAL = b"\x80\x00"
ABOVE_SAFE = b"\xff" * 7 + b"\x7f"
NINE_BYTES = b"\xff" * 8 + b"\x01"
DUPLICATE_CLIENT = b"\x02\x07\x01\x07\x02"


def test_protocol_strictness_refuses_what_lib0_encoders_never_write() -> None:
    for data, fragment in [(NON_MINIMAL, "non-minimal"), (ABOVE_SAFE, r"exceeds 2\*\*53-1"),
                           (NINE_BYTES, "longer than 8 bytes"), (b"\x80", "truncated")]:
        with pytest.raises(VarUintError, match=fragment):
            read_varuint(data, 0, Strictness.PROTOCOL)
    with pytest.raises(VarUintError, match="twice"):
        decode_state_vector(DUPLICATE_CLIENT, Strictness.PROTOCOL)
    # transport's two readers use this strictness and keep their own error type
    with pytest.raises(ProtocolError, match="non-minimal"):
        Reader(NON_MINIMAL).read_varuint()
    with pytest.raises(ProtocolError, match="twice"):
        decode_peer_state_vector(DUPLICATE_CLIENT)


def test_bounded_strictness_is_the_replicas_default() -> None:
    assert read_varuint(NON_MINIMAL, 0) == (0, 2)
    assert read_varuint(ABOVE_SAFE, 0)[0] > MAX_SAFE_INTEGER
    with pytest.raises(VarUintError, match="longer than 8 bytes"):
        read_varuint(NINE_BYTES, 0)
    assert decode_state_vector(DUPLICATE_CLIENT) == {7: 2}
    for bad in [b"", b"\x05\x01", b"\x01\x07\x01\x00"]:
        with pytest.raises(ValueError):
            decode_state_vector(bad)


def test_lenient_strictness_reads_any_boundary_inside_updates() -> None:
    assert read_varuint(NINE_BYTES, 0, Strictness.LENIENT) == (2**56 - 1 + 2**56, 9)
    with pytest.raises(VarUintError, match="longer than 10 bytes"):
        read_varuint(b"\xff" * 11, 0, Strictness.LENIENT)
    assert _Cursor(NINE_BYTES).varuint() == 2**57 - 1
    with pytest.raises(UpdateFormatError):
        _Cursor(b"\xff\xff").varuint()


def test_every_strictness_decodes_what_pycrdt_encodes() -> None:
    doc, other = Doc(), Doc()
    doc.get("m", type=Map)["a"] = 1
    other.get("m", type=Map)["b"] = 2
    doc.apply_update(other.get_update())
    vectors = {strictness: decode_state_vector(doc.get_state(), strictness) for strictness in Strictness}
    assert len(set(map(lambda v: tuple(sorted(v.items())), vectors.values()))) == 1
    clocks = vectors[Strictness.PROTOCOL]
    assert doc.get_update(encode_state_vector(clocks)) == b"\x00\x00"
    assert encode_varuint(300) == b"\xac\x02"


def test_one_digest_function_for_replicas_and_docs() -> None:
    doc = Doc()
    doc.get("m", type=Map)["a"] = 1
    state_vector = doc.get_state()
    assert document_digest(doc) == state_digest(state_vector, doc.get_update(state_vector))
