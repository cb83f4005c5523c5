"""lib0 wire primitives used by the Yjs protocols: varuint, varUint8Array, varString.

Varuints come from the one codec, `replica.statevector`, decoded at its PROTOCOL strictness.
Encoding follows lib0 (the library y-protocols and Yjs are built on) byte for byte.
Decoding is total: any malformed input raises :class:`ProtocolError` and nothing else,
so that callers can hand untrusted bytes to a :class:`Reader` without a catch-all.
"""

from __future__ import annotations

from replica.statevector import (
    MAX_SAFE_INTEGER,
    MAX_VARUINT_BYTES,
    Strictness,
    VarUintError,
    encode_varuint,
    read_varuint,
)
from transport import closecodes

__all__ = [
    "MAX_SAFE_INTEGER",
    "MAX_VARUINT_BYTES",
    "ProtocolError",
    "Reader",
    "encode_var_bytes",
    "encode_var_string",
    "encode_varuint",
]


class ProtocolError(Exception):
    """Bytes from a peer that do not form a valid message; carries the close code to send."""

    def __init__(self, message: str, close_code: int = closecodes.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.close_code = close_code


def encode_var_bytes(data: bytes) -> bytes:
    """Encode bytes as a lib0 varUint8Array: varuint length, then the bytes."""
    return encode_varuint(len(data)) + bytes(data)


def encode_var_string(text: str) -> bytes:
    """Encode a str as a lib0 varString: varuint UTF-8 *byte* length, then the UTF-8 bytes.

    (pycrdt's ``Encoder.write_var_string`` writes the character count instead, which is
    wrong for non-ASCII text.) Raises ``UnicodeEncodeError`` for lone surrogates.
    """
    return encode_var_bytes(text.encode("utf-8"))


class Reader:
    """A cursor over untrusted bytes that decodes lib0 primitives or raises ProtocolError."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    @property
    def position(self) -> int:
        """Offset of the next unread byte."""
        return self._pos

    @property
    def remaining(self) -> int:
        """Number of bytes not yet read."""
        return len(self._data) - self._pos

    def at_end(self) -> bool:
        """True when every byte has been consumed."""
        return self._pos == len(self._data)

    def expect_end(self, what: str) -> None:
        """Raise ProtocolError if bytes remain after `what` was fully decoded."""
        if not self.at_end():
            raise ProtocolError(f"{self.remaining} trailing byte(s) after {what}")

    def read_byte(self, what: str) -> int:
        """Read one raw byte."""
        if self._pos >= len(self._data):
            raise ProtocolError(f"truncated input: expected {what} at offset {self._pos}")
        value = self._data[self._pos]
        self._pos += 1
        return value

    def read_varuint(self, what: str = "varuint") -> int:
        """Read a minimally encoded varuint of at most 8 bytes and at most 2**53-1."""
        try:
            value, self._pos = read_varuint(self._data, self._pos, Strictness.PROTOCOL, what)
        except VarUintError as error:
            raise ProtocolError(str(error)) from None
        return value

    def read_bytes(self, length: int, what: str) -> bytes:
        """Read exactly `length` raw bytes."""
        if length > self.remaining:
            raise ProtocolError(
                f"{what} declares {length} byte(s) but only {self.remaining} remain"
            )
        value = self._data[self._pos : self._pos + length]
        self._pos += length
        return value

    def read_var_bytes(self, what: str = "varUint8Array") -> bytes:
        """Read a varUint8Array: varuint length, then that many bytes."""
        length = self.read_varuint(f"length of {what}")
        return self.read_bytes(length, what)

    def read_var_string(self, what: str = "varString") -> str:
        """Read a varString: varuint UTF-8 byte length, then strictly valid UTF-8."""
        raw = self.read_var_bytes(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ProtocolError(f"{what} is not valid UTF-8: {error.reason}") from None
