"""Sans-I/O claim requests and responses between a claimant and a room's claim arbiter.

One request and one response per websocket, each one binary msgpack frame (docs/protocol.md,
"Claim arbiter"). Decoding is strict: exact keys, exact types, bounded sizes; anything else
raises `ClaimProtocolError` with the reason, which the arbiter sends back as a `malformed`
or `too_large` error and acts on nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import msgpack

VERSION = 1
CLAIM_HEADER = "X-Agentstate-Claim"
"""Request header that marks a websocket as one claim request (not a sync connection)."""
MAX_REQUEST_BYTES = 2048
"""A request frame larger than this is refused unread (ids and names are at most a few hundred bytes)."""
MAX_RESPONSE_BYTES = 4 << 20
"""A response frame larger than this is refused by the claimant (the update is one small write)."""
MAX_ID = 100
MAX_NAME = 200
MAX_MESSAGE = 500
MAX_TTL = 7 * 24 * 3600.0
MAX_EPOCH = 2**53

Op = Literal["claim", "renew", "release", "complete"]
OPS: frozenset[str] = frozenset({"claim", "renew", "release", "complete"})
ErrorKind = Literal["malformed", "too_large", "unauthorized", "forbidden", "room", "not_found", "invalid", "stale",
                    "internal"]
ERROR_KINDS: frozenset[str] = frozenset({"malformed", "too_large", "unauthorized", "forbidden", "room", "not_found",
                                         "invalid", "stale", "internal"})
_REQUEST_KEYS = {"v", "op", "rid", "task", "agent", "ttl", "epoch"}
_RESPONSE_KEYS = {"v", "rid", "ok", "result", "update", "error"}


class ClaimProtocolError(ValueError):
    """A frame is not a valid claim request or response; `kind` is the error kind to answer with."""

    def __init__(self, message: str, kind: ErrorKind = "malformed") -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind


@dataclass(frozen=True)
class ClaimRequest:
    """One operation on one task's claim, named by a request id that makes retries idempotent."""

    op: Op
    rid: str
    task: str
    agent: str
    ttl: float | None = None
    epoch: int | None = None

    def __post_init__(self) -> None:
        _check_request(self)


@dataclass(frozen=True)
class ClaimError:
    """Why the arbiter did not act: a kind from ERROR_KINDS and a one-line message."""

    kind: ErrorKind
    message: str


@dataclass(frozen=True)
class ClaimResponse:
    """The arbiter's answer: the claim result and the update that wrote it, or an error."""

    rid: str
    result: dict[str, Any] | None = None
    update: bytes = b""
    error: ClaimError | None = None

    @property
    def ok(self) -> bool:
        """True when the arbiter decided (the result may still be `lost`)."""
        return self.error is None


def _text(value: Any, what: str, limit: int, *, bar: bool = False) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise ClaimProtocolError(f"{what} must be 1-{limit} printable characters")
    if bar and "|" in value:
        raise ClaimProtocolError(f"{what} must not contain '|'")
    return value


def _check_request(request: ClaimRequest) -> None:
    """Raise ClaimProtocolError unless every field of `request` is in range for its op."""
    if request.op not in OPS:
        raise ClaimProtocolError(f"op must be one of {', '.join(sorted(OPS))}")
    _text(request.rid, "rid", MAX_ID)
    if not request.rid.isascii():
        raise ClaimProtocolError("rid must be ASCII")
    _text(request.task, "task", MAX_NAME, bar=True)
    _text(request.agent, "agent", MAX_NAME, bar=True)
    ttl, epoch = request.ttl, request.epoch
    if request.op in ("claim", "renew"):
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) \
                or not 0 < ttl <= MAX_TTL:
            raise ClaimProtocolError(f"ttl must be a number of seconds in (0, {MAX_TTL:g}]")
    elif ttl is not None:
        raise ClaimProtocolError(f"{request.op} takes no ttl")
    if request.op == "claim":
        if epoch is not None:
            raise ClaimProtocolError("claim takes no epoch")
    elif isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 < epoch <= MAX_EPOCH:
        raise ClaimProtocolError(f"{request.op} needs an integer epoch in 1..2^53")


def encode_request(request: ClaimRequest) -> bytes:
    """The request as one msgpack frame."""
    body: dict[str, Any] = {"v": VERSION, "op": request.op, "rid": request.rid, "task": request.task,
                            "agent": request.agent}
    if request.ttl is not None:
        body["ttl"] = float(request.ttl)
    if request.epoch is not None:
        body["epoch"] = request.epoch
    return bytes(msgpack.packb(body, use_bin_type=True))


def _unpack(frame: Any, limit: int, what: str) -> dict[Any, Any]:
    if isinstance(frame, str):
        raise ClaimProtocolError(f"a claim {what} is one binary frame, not text")
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise ClaimProtocolError(f"a claim {what} must be bytes")
    if len(frame) > limit:
        raise ClaimProtocolError(f"a claim {what} is at most {limit} bytes, got {len(frame)}", "too_large")
    try:
        body = msgpack.unpackb(bytes(frame), raw=False, strict_map_key=True,
                               max_str_len=limit, max_bin_len=limit, max_array_len=16, max_map_len=16)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as error:
        raise ClaimProtocolError(f"a claim {what} is not one msgpack map: {error}") from None
    if not isinstance(body, dict):
        raise ClaimProtocolError(f"a claim {what} must be a msgpack map")
    if body.get("v") != VERSION:
        raise ClaimProtocolError(f"unsupported claim protocol version {body.get('v')!r} (this side speaks {VERSION})")
    return body


def decode_request(frame: Any) -> ClaimRequest:
    """Parse and validate one request frame (ClaimProtocolError says what is wrong)."""
    body = _unpack(frame, MAX_REQUEST_BYTES, "request")
    unknown = set(body) - _REQUEST_KEYS
    if unknown:
        raise ClaimProtocolError(f"unknown request field(s): {', '.join(sorted(map(str, unknown)))[:200]}")
    missing = {"op", "rid", "task", "agent"} - set(body)
    if missing:
        raise ClaimProtocolError(f"missing request field(s): {', '.join(sorted(missing))}")
    op = body["op"]
    if op not in OPS:
        raise ClaimProtocolError(f"op must be one of {', '.join(sorted(OPS))}")
    return ClaimRequest(op, body["rid"], body["task"], body["agent"], body.get("ttl"), body.get("epoch"))


def encode_response(response: ClaimResponse) -> bytes:
    """The response as one msgpack frame."""
    body: dict[str, Any] = {"v": VERSION, "rid": response.rid, "ok": response.ok}
    if response.error is not None:
        body["error"] = {"kind": response.error.kind, "message": response.error.message[:MAX_MESSAGE]}
        if response.result is not None:
            body["result"] = response.result
    else:
        body["result"] = response.result
        body["update"] = bytes(response.update)
    return bytes(msgpack.packb(body, use_bin_type=True))


def error_response(rid: str, kind: ErrorKind, message: str, result: dict[str, Any] | None = None) -> ClaimResponse:
    """A refusal (nothing was written)."""
    return ClaimResponse(rid=rid, result=result, error=ClaimError(kind, message[:MAX_MESSAGE]))


def decode_response(frame: Any, rid: str) -> ClaimResponse:
    """Parse and validate the response to request `rid` (ClaimProtocolError if it is not one)."""
    body = _unpack(frame, MAX_RESPONSE_BYTES, "response")
    unknown = set(body) - _RESPONSE_KEYS
    if unknown:
        raise ClaimProtocolError(f"unknown response field(s): {', '.join(sorted(map(str, unknown)))[:200]}")
    got = body.get("rid")
    if got != rid and not (body.get("ok") is False and got == ""):
        raise ClaimProtocolError(f"response names request {str(got)[:MAX_ID]!r}, not {rid!r}")
    result = body.get("result")
    if result is not None and not isinstance(result, dict):
        raise ClaimProtocolError("response result must be a map")
    if body.get("ok") is True:
        update = body.get("update")
        if not isinstance(update, bytes) or result is None:
            raise ClaimProtocolError("a successful response carries a result map and update bytes")
        return ClaimResponse(rid=rid, result=result, update=update)
    if body.get("ok") is not False:
        raise ClaimProtocolError("response field ok must be true or false")
    error = body.get("error")
    if not isinstance(error, dict) or error.get("kind") not in ERROR_KINDS or not isinstance(error.get("message"), str):
        raise ClaimProtocolError("a failed response carries error {kind, message}")
    return ClaimResponse(rid=rid, result=result, error=ClaimError(error["kind"], error["message"][:MAX_MESSAGE]))
