"""Bearer-token access control of the mesh and the loopback rule for listening.

A token comes from the `Authorization: Bearer ...` header or, for browser clients that
cannot set headers on a websocket, from the `?token=` query parameter. Every configured
token is compared in constant time, so timing reveals neither a token nor which list
(read-write or read-only) it belongs to.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs

BEARER_PREFIX = "bearer "


class InsecureListenError(ValueError):
    """Listening beyond loopback without a token was asked for without the explicit override."""


@dataclass(frozen=True, slots=True)
class Access:
    """The outcome of checking a presented token."""

    allowed: bool
    read_only: bool
    reason: str


class TokenAuth:
    """Read-write and read-only tokens; with none configured, everyone is allowed to write."""

    def __init__(self, tokens: Iterable[str] = (), read_only_tokens: Iterable[str] = ()) -> None:
        self._tokens = [_token_bytes(token) for token in tokens]
        self._read_only = [_token_bytes(token) for token in read_only_tokens]

    @property
    def required(self) -> bool:
        """True when a peer must present a token."""
        return bool(self._tokens or self._read_only)

    def check(self, presented: str | None) -> Access:
        """Whether `presented` grants access, and whether read-only; compares against every token."""
        if not self.required:
            return Access(True, False, "no token required")
        if presented is None:
            return Access(False, False, "missing token")
        candidate = presented.encode("utf-8", "surrogatepass")
        read_write = False
        for token in self._tokens:
            read_write |= hmac.compare_digest(candidate, token)
        read_only = False
        for token in self._read_only:
            read_only |= hmac.compare_digest(candidate, token)
        if read_write:
            return Access(True, False, "read-write token")
        if read_only:
            return Access(True, True, "read-only token")
        return Access(False, False, "wrong token")


def _token_bytes(token: str) -> bytes:
    """A configured token as bytes; empty or non-string tokens are configuration errors."""
    if not isinstance(token, str) or not token:
        raise ValueError("tokens must be non-empty strings")
    return token.encode("utf-8")


def token_from_request(authorization: str | None, query: str) -> str | None:
    """The bearer token of a request: the Authorization header first, else `?token=`."""
    if authorization is not None and authorization[: len(BEARER_PREFIX)].lower() == BEARER_PREFIX:
        return authorization[len(BEARER_PREFIX) :].strip()
    values = parse_qs(query, keep_blank_values=True).get("token")
    return values[0] if values else None


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: 127.0.0.0/8, ::1 and `localhost`."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen_safety(host: str, auth: TokenAuth, allow_insecure_public: bool) -> None:
    """Refuse to listen beyond loopback without a token unless explicitly allowed."""
    if is_loopback(host) or auth.required or allow_insecure_public:
        return
    raise InsecureListenError(
        f"refusing to listen on {host!r} without a token: anyone who can reach it could read and "
        "write the replica; set a token, listen on 127.0.0.1, or pass the explicit override "
        "(--insecure-no-token-i-understand)"
    )
