"""Dialing: the peer URLs a node keeps a connection to, and the loop that keeps each one up.

`DialTarget` is what a node knows of one peer URL (for status too); `dial_target`
validates a URL for a room; `dial_loop` connects, hands the websocket to the caller's
`serve` until it closes, and waits with backoff and jitter before dialing again. The
rules (4409 waits for the other connection to end, 44xx waits the maximum, a synced
connection resets the backoff) are in docs/protocol.md, "Reconnect and catch-up".
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect

from transport import closecodes
from transport.limits import Backoff, ReconnectPolicy
from replica.statevector import missing_from
from transport.peer import PeerConnection, iso_time

log = logging.getLogger("transport.mesh")


@dataclass
class DialTarget:
    """A peer URL this node keeps a connection to, and what it knows of it."""

    url: str
    connect_url: str
    replica_id: str | None = None
    attempts: int = 0
    connection: PeerConnection | None = None
    last_error: str | None = None
    last_close_code: int | None = None
    last_seen: float | None = None
    next_attempt: float | None = None
    known_state: dict[int, int] | None = None
    is_self: bool = False
    backoff: Backoff | None = field(default=None, repr=False)

    def describe(self, ours: Mapping[int, int]) -> dict[str, Any]:
        """The status view of this target while it has no connection (a connection describes itself)."""
        return {
            "name": self.url,
            "url": self.url,
            "direction": "dial",
            "replica_id": self.replica_id,
            "connected": False,
            "last_seen": iso_time(self.last_seen),
            "behind": missing_from(ours, self.known_state) if self.known_state is not None else None,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "last_close_code": self.last_close_code,
            "next_attempt": iso_time(self.next_attempt),
            "self": self.is_self,
        }


def dial_target(url: str, room: str) -> DialTarget:
    """Validate a peer URL; an empty path means `room`, any other path must name it."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"peer URL must be ws:// or wss:// with a host: {url!r}")
    path = parts.path
    if path in ("", "/"):
        path = "/" + quote(room, safe="/:@!$&'()*+,;=-._~")
    elif unquote(path[1:]) != room:
        raise ValueError(f"peer URL {url!r} names room {unquote(path[1:])!r}, not {room!r}")
    return DialTarget(url=url, connect_url=urlunsplit(parts._replace(path=path)))


def client_ssl(target: DialTarget, cafile: str | None) -> ssl.SSLContext | None:
    """TLS context for dialing a wss:// peer: the given CA, else the system's."""
    if not target.connect_url.startswith("wss:"):
        return None
    return ssl.create_default_context(cafile=cafile)


async def dial_loop(
    target: DialTarget,
    *,
    reconnect: ReconnectPolicy,
    connect_options: dict[str, Any],
    cafile: str | None,
    serve: Callable[[ClientConnection, DialTarget], Awaitable[int | None]],
    stopping: Callable[[], bool],
    wait_unconnected: Callable[[str], Awaitable[None]],
) -> None:
    """Keep one connection to `target`: dial, serve, back off (with jitter), repeat until `stopping()`."""
    backoff = target.backoff = Backoff(reconnect)
    while not stopping():
        if target.is_self:
            log.warning("event=dial_stopped peer=%s reason=self_connection", target.url)
            return
        if target.replica_id is not None:
            await wait_unconnected(target.replica_id)
            if stopping():
                return
        target.attempts += 1
        target.next_attempt = None
        try:
            ws = await connect(target.connect_url, ssl=client_ssl(target, cafile), **connect_options)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            target.last_error = f"{type(error).__name__}: {error}"
            delay = backoff.next_delay()
            target.next_attempt = time.time() + delay
            log.debug("event=dial_failed peer=%s error=%s retry_in=%.2f", target.url, json.dumps(target.last_error), delay)
            await asyncio.sleep(delay)
            continue
        target.last_error = None
        code: int | None = None
        try:
            code = await serve(ws, target)
        except Exception:
            log.exception("event=connection_failed peer=%s", target.url)
        finally:
            with suppress(Exception):
                await ws.close()
        target.last_close_code = code
        if stopping():
            return
        if code == closecodes.DUPLICATE_CONNECTION:
            delay = reconnect.initial
        elif code is not None and closecodes.is_permanent(code):
            delay = backoff.longest()
            log.warning("event=dial_refused peer=%s code=%d retry_in=%.1f", target.url, code, delay)
        else:
            delay = backoff.next_delay()
        target.next_attempt = time.time() + delay
        await asyncio.sleep(delay)
