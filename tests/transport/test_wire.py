"""lib0 primitives: exact bytes, agreement with pycrdt, and total decoding."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt._sync import Decoder, write_var_uint

from transport.wire import (
    MAX_SAFE_INTEGER,
    ProtocolError,
    Reader,
    encode_var_bytes,
    encode_var_string,
    encode_varuint,
)

safe_ints = st.integers(min_value=0, max_value=MAX_SAFE_INTEGER)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (MAX_SAFE_INTEGER, b"\xff\xff\xff\xff\xff\xff\xff\x0f"),
    ],
)
def test_varuint_known_bytes(value: int, encoded: bytes) -> None:
    assert encode_varuint(value) == encoded
    reader = Reader(encoded)
    assert reader.read_varuint() == value
    assert reader.at_end()


@given(safe_ints)
def test_varuint_round_trip_matches_pycrdt(value: int) -> None:
    encoded = encode_varuint(value)
    assert encoded == write_var_uint(value)
    assert len(encoded) <= 8
    reader = Reader(encoded)
    assert reader.read_varuint() == value
    assert reader.at_end()


@pytest.mark.parametrize("value", [-1, MAX_SAFE_INTEGER + 1, 2**64])
def test_encode_varuint_refuses_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        encode_varuint(value)


def test_encode_varuint_refuses_bool() -> None:
    with pytest.raises(TypeError):
        encode_varuint(True)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "truncated"),
        (b"\x80", "truncated"),
        (b"\xff\xff\xff", "truncated"),
        (b"\x80\x00", "non-minimal"),
        (b"\xff\x80\x00", "non-minimal"),
        (b"\xff" * 8 + b"\x01", "longer than 8 bytes"),
        (b"\xff" * 7 + b"\x10", "exceeds 2**53-1"),
        (b"\xff" * 7 + b"\x7f", "exceeds 2**53-1"),
    ],
)
def test_bad_varuint_raises_protocol_error(data: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(fragment)):
        Reader(data).read_varuint()


def test_var_bytes_round_trip_and_length_guard() -> None:
    payload = bytes(range(200))
    encoded = encode_var_bytes(payload)
    assert encoded[:2] == b"\xc8\x01"
    reader = Reader(encoded)
    assert reader.read_var_bytes() == payload
    assert reader.at_end()
    with pytest.raises(ProtocolError, match="declares 200 byte"):
        Reader(encoded[:-1]).read_var_bytes()


@pytest.mark.parametrize("text", ["", "plain", "héllo", "日本語", "emoji 🦀", "a\x00b"])
def test_var_string_uses_utf8_byte_length(text: str) -> None:
    raw = text.encode("utf-8")
    encoded = encode_var_string(text)
    assert encoded == write_var_uint(len(raw)) + raw
    assert Reader(encoded).read_var_string() == text
    assert Decoder(encoded).read_var_string() == text


def test_var_string_differs_from_pycrdt_char_count_for_non_ascii() -> None:
    from pycrdt._sync import Encoder

    pycrdt_encoder = Encoder()
    pycrdt_encoder.write_var_string("héllo")
    assert pycrdt_encoder.to_bytes()[0] == 5
    assert encode_var_string("héllo")[0] == 6


def test_var_string_refuses_invalid_utf8() -> None:
    with pytest.raises(ProtocolError, match="not valid UTF-8"):
        Reader(b"\x02\xc3\x28").read_var_string()
    with pytest.raises(ProtocolError, match="not valid UTF-8"):
        Reader(b"\x03\xed\xa0\x80").read_var_string()


def test_var_string_encode_refuses_lone_surrogate() -> None:
    with pytest.raises(UnicodeEncodeError):
        encode_var_string("\ud800")


def test_expect_end_reports_trailing_bytes() -> None:
    reader = Reader(b"\x01\x02")
    assert reader.read_varuint() == 1
    assert reader.remaining == 1
    with pytest.raises(ProtocolError, match="1 trailing byte"):
        reader.expect_end("thing")


@settings(max_examples=500)
@given(st.binary(max_size=64), st.lists(st.sampled_from(["uint", "bytes", "string"]), max_size=8))
def test_reader_raises_only_protocol_error(data: bytes, reads: list[str]) -> None:
    reader = Reader(data)
    try:
        for read in reads:
            before = reader.position
            if read == "uint":
                reader.read_varuint()
            elif read == "bytes":
                reader.read_var_bytes()
            else:
                reader.read_var_string()
            assert reader.position > before
    except ProtocolError:
        pass
    assert 0 <= reader.position <= len(data)
