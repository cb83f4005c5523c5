"""WebSocket close codes agentstate sends, and which of them are permanent refusals.

The y-websocket client stops reconnecting when closed with a code in 4400-4499 and
retries on anything else, so a refusal that would recur on every retry uses 44xx and a
transient condition uses a standard code (RFC 6455 section 7.4.1).
"""

from __future__ import annotations

NORMAL_CLOSURE = 1000
"""Normal end of a connection."""

GOING_AWAY = 1001
"""Graceful shutdown of this node: the peer should reconnect later."""

POLICY_VIOLATION = 1008
"""Standard generic refusal. Not used for peer errors: y-websocket clients retry on it."""

MESSAGE_TOO_BIG_STANDARD = 1009
"""Standard 'message too big'; what the websockets library sends when its max_size trips."""

INTERNAL_ERROR = 1011
"""This node hit an unexpected condition; the peer may retry."""

TRY_AGAIN_LATER = 1013
"""Temporary refusal (for example the connection limit is reached); the peer may retry."""

PROTOCOL_ERROR = 4400
"""The peer sent bytes that are not a valid message, or a message not allowed now."""

UNAUTHORIZED = 4401
"""Missing or wrong token."""

FORBIDDEN = 4403
"""The token is valid but does not allow this, e.g. a read-only peer keeps writing."""

ROOM_MISMATCH = 4404
"""The peer's hello does not name the room this connection serves."""

FRAME_TOO_BIG = 4413
"""A frame exceeded the size limit; permanent, unlike 1009, so the peer does not loop."""

DUPLICATE_CONNECTION = 4409
"""This pair of nodes already has a connection (or the peer is this node); the loser redials later."""

UNSUPPORTED_VERSION = 4426
"""The peer's hello announces a protocol version this node does not speak."""

RATE_LIMITED = 4429
"""The peer exceeded its message rate limit."""

PERMANENT_REFUSAL_RANGE = range(4400, 4500)
"""Codes on which a y-websocket client gives up reconnecting."""

REASONS: dict[int, str] = {
    NORMAL_CLOSURE: "normal closure",
    GOING_AWAY: "going away",
    POLICY_VIOLATION: "policy violation",
    MESSAGE_TOO_BIG_STANDARD: "message too big",
    INTERNAL_ERROR: "internal error",
    TRY_AGAIN_LATER: "try again later",
    PROTOCOL_ERROR: "protocol error",
    UNAUTHORIZED: "unauthorized",
    FORBIDDEN: "forbidden",
    ROOM_MISMATCH: "room mismatch",
    DUPLICATE_CONNECTION: "duplicate connection",
    FRAME_TOO_BIG: "frame too big",
    UNSUPPORTED_VERSION: "unsupported protocol version",
    RATE_LIMITED: "rate limited",
}
"""Short reason phrase for each code, fit for a close frame (under 123 bytes) and logs."""


def is_permanent(code: int) -> bool:
    """True if a y-websocket client closed with `code` stops reconnecting (4400-4499)."""
    return code in PERMANENT_REFUSAL_RANGE
