"""The mesh: a replica listens and dials peers over websockets and keeps them in sync.

Each connection runs a sans-I/O `Session`; this module does the I/O and the policy:
authentication, limits, one connection per pair of nodes, relaying, reconnecting,
awareness and graceful shutdown. Updates a peer sends are applied to the replica with
the peer as origin; the replica's update listener then queues every change for every
other connection, so relaying needs no bookkeeping and an update that changes nothing
(no event) dies out. The rules are specified in docs/protocol.md, "Mesh, auth and limits".
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import suppress
from typing import Any
from urllib.parse import quote, unquote

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.frames import CloseCode

from replica.replica import Replica
from replica.statevector import decode_state_vector
from transport import closecodes
from transport.auth import TokenAuth, check_listen_safety, token_from_request
from transport.claim_protocol import CLAIM_HEADER
from transport.coalesce import RunMerger
from transport.dialing import DialTarget, dial_loop, dial_target
from transport.digests import DigestCache
from transport.awareness import AwarenessTable
from transport.http import HttpRoutes
from transport.intake import UpdateIntake
from transport.limits import Limits, RateLimiter, ReconnectPolicy
from transport.messages import MAX_ROOM_SIZE, AuthPermissionDenied, encode
from transport.peer import PeerConnection
from transport.relay import LINKS_KEY, live_links, reaches_directly
from transport.ratelog import RateLimitedLog
from transport.session import (
    AwarenessQueried,
    AwarenessReceived,
    Event,
    HelloReceived,
    PermissionDenied,
    ProtocolViolation,
    Role,
    Session,
    SessionUsageError,
    StepOneReceived,
    StepTwoReceived,
    Synced,
    UpdateReceived,
    UpdateRefused,
)

log = logging.getLogger(__name__)

HELLO_HEADER = "X-Agentstate-Hello"
"""Request header by which a dialing agentstate node announces that a hello comes first."""

CAPABILITIES = frozenset({"digest"})
"""Optional behaviour this node announces in its hello."""

HELLO_WAIT = 2.0
"""Seconds a listener holds its opening frames for an announced hello before sending anyway."""

SHUTDOWN_DRAIN = 2.0
"""Seconds stop() waits for send queues to empty before closing sockets."""

DEFAULT_AWARENESS_INTERVAL = 10.0
"""Seconds between renewals of our awareness state (y-websocket closes silent sockets at 30)."""

_REASON_OF_CODE = {
    closecodes.PROTOCOL_ERROR: "protocol_error",
    closecodes.FRAME_TOO_BIG: "frame_too_big",
    closecodes.ROOM_MISMATCH: "room_mismatch",
    closecodes.UNSUPPORTED_VERSION: "unsupported_version",
}


def _close_reason(code: int) -> str:
    """The short phrase sent in a close frame."""
    if code == closecodes.DUPLICATE_CONNECTION:
        return "duplicate connection"
    return closecodes.REASONS.get(code, "closing")


def _close_big_frames_with_4413(protocol: Any) -> None:
    """Make the websockets library close oversized frames with 4413 instead of 1009.

    A y-websocket client reconnects after 1009 and would resend the same frame forever.
    """
    fail = protocol.fail

    def fail_with_permanent_code(code: int, reason: str = "") -> None:
        if code == CloseCode.MESSAGE_TOO_BIG:
            code, reason = closecodes.FRAME_TOO_BIG, reason or _close_reason(closecodes.FRAME_TOO_BIG)
        fail(code, reason[:120])

    protocol.fail = fail_with_permanent_code


class _ServerConnection(ServerConnection):
    """Server-side connection with the 4413 rule."""

    def __init__(self, protocol: Any, *args: Any, **kwargs: Any) -> None:
        _close_big_frames_with_4413(protocol)
        super().__init__(protocol, *args, **kwargs)


class _ClientConnection(ClientConnection):
    """Client-side connection with the 4413 rule."""

    def __init__(self, protocol: Any, *args: Any, **kwargs: Any) -> None:
        _close_big_frames_with_4413(protocol)
        super().__init__(protocol, *args, **kwargs)


def parse_listen(value: str) -> tuple[str, int]:
    """Parse "HOST:PORT" or "[V6]:PORT" into (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address must be HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _format_address(address: Any) -> str:
    """host:port of a socket address, whatever its family."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in str(host) else f"{host}:{address[1]}"
    return str(address)


class Mesh:
    """Listen and dial for one replica and room; see docs/protocol.md for every rule."""

    def __init__(
        self,
        replica: Replica,
        *,
        room: str = "agentstate",
        listen: tuple[str, int] | None = None,
        peers: Iterable[str] = (),
        tokens: Iterable[str] = (),
        read_only_tokens: Iterable[str] = (),
        peer_token: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        cafile: str | None = None,
        allow_insecure_public: bool = False,
        limits: Limits | None = None,
        reconnect: ReconnectPolicy | None = None,
        awareness_interval: float = DEFAULT_AWARENESS_INTERVAL,
        presence: Mapping[str, Any] | None = None,
        use_digest: bool = True,
        ping_interval: float | None = 20.0,
        close_timeout: float = 5.0,
        routes: HttpRoutes | None = None,
        follow: bool = True,
        before_apply: Callable[[bytes], Awaitable[None]] | None = None,
    ) -> None:
        if not room or not room.isprintable() or len(room.encode("utf-8")) > MAX_ROOM_SIZE:
            raise ValueError(f"room must be printable and 1-{MAX_ROOM_SIZE} bytes: {room!r}")
        if awareness_interval <= 0:
            raise ValueError("awareness_interval must be positive")
        self.replica = replica
        self.replica_id = replica.replica_id
        self.room = room
        self.listen = listen
        self.limits = limits or Limits()
        self.reconnect = reconnect or ReconnectPolicy()
        self.awareness_interval = awareness_interval
        self.use_digest = use_digest
        self.ping_interval = ping_interval
        self.close_timeout = close_timeout
        self.routes = routes if routes is not None else HttpRoutes()
        self._follow = follow
        self.claim_handler: Any = None
        """`ArbiterServer.handle` when this node is the room's claim arbiter (`serve --arbiter`), else None."""
        self._intake = UpdateIntake(replica, self.limits, reject=self._reject, close=self._close, store=before_apply)
        self._auth = TokenAuth(tokens, read_only_tokens)
        self._peer_token = peer_token
        self._certfile, self._keyfile, self._cafile = certfile, keyfile, cafile
        if listen is not None:
            check_listen_safety(listen[0], self._auth, allow_insecure_public)
            if keyfile is not None and certfile is None:
                raise ValueError("a TLS key needs a certificate (certfile)")
        self._targets = [self._target(url) for url in peers]
        base_presence = {"replica_id": self.replica_id, "room": room, "kind": "agentstate"}
        self._awareness = AwarenessTable(
            replica.client_id,
            {**base_presence, **{key: value for key, value in dict(presence or {}).items() if key != LINKS_KEY}},
            max_states=self.limits.max_awareness_states,
        )
        self._connections: tuple[PeerConnection, ...] = ()
        self._links: tuple[str, ...] = ()
        self._inbound: set[ServerConnection] = set()
        self._rejections: Counter[str] = Counter()
        self._totals: Counter[str] = Counter()
        self._digests = DigestCache(replica)
        self._merger = RunMerger()
        self._server: Server | None = None
        self._address: tuple[str, int] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._changed: asyncio.Condition | None = None
        self._unsubscribe: Any = None
        self._sequence = 0
        self._started = False
        self._stopping = False
        self._stopped = False
        self.rejection_log = RateLimitedLog(log)
        """Rejections are logged at most `lines` per `interval` per reason (every one is counted)."""
        """Called with the seconds each successful apply of a peer's update took (metrics)."""

    # -- configuration helpers ------------------------------------------------------------

    def _target(self, url: str) -> DialTarget:
        """Validate a peer URL for this room (transport.dialing.dial_target)."""
        return dial_target(url, self.room)

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) actually listened on (the port is resolved when 0 was asked)."""
        return self._address

    @property
    def url(self) -> str | None:
        """ws:// or wss:// URL of this node's room, once listening."""
        if self._address is None:
            return None
        scheme = "wss" if self._certfile else "ws"
        host, port = self._address
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{port}/{quote(self.room, safe='/')}"

    @property
    def apply_observer(self) -> Callable[[float], None] | None:
        """Called with each peer update's apply time in seconds (the metrics' histogram), or None."""
        return self._intake.apply_observer

    @apply_observer.setter
    def apply_observer(self, observer: Callable[[float], None] | None) -> None:
        self._intake.apply_observer = observer

    def connections(self) -> tuple[PeerConnection, ...]:
        """Live connections (for status and tests)."""
        return self._connections

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (if asked), start dialing every peer and the awareness timer; return once listening."""
        if self._started:
            raise RuntimeError("mesh already started")
        self._started = True
        self._changed = asyncio.Condition()
        self._unsubscribe = self.replica.on_update(self._on_replica_update)
        if self._follow:
            self.replica.follow()
        if self.use_digest:
            # warm the digest cache (and the worker thread) while the first dial connects;
            # the cache checks the generation again when a connection asks for it
            self._spawn(self._digests.current())
            self._tasks.append(asyncio.create_task(self._digests.refresh_loop(), name="agentstate-digest"))
        if self.listen is not None:
            await self._listen(*self.listen)
        for target in self._targets:
            self._tasks.append(asyncio.create_task(self._dial_loop(target), name=f"agentstate-dial-{target.url}"))
        self._tasks.append(asyncio.create_task(self._awareness_loop(), name="agentstate-awareness"))

    async def _listen(self, host: str, port: int) -> None:
        """Start the websocket server (the update listener is already subscribed)."""
        try:
            self._server = await serve(
                self._handle_inbound,
                host,
                port,
                ssl=self._server_ssl(),
                max_size=self.limits.max_frame_size,
                compression=None,
                ping_interval=self.ping_interval,
                close_timeout=self.close_timeout,
                create_connection=_ServerConnection,
                process_request=self.routes.process_request,
            )
        except BaseException:
            self._unsubscribe()
            self._unsubscribe = None
            raise
        sockname = self._server.sockets[0].getsockname()
        self._address = (sockname[0], sockname[1])
        log.info("event=listening url=%s", self.url)

    async def stop(self) -> None:
        """Say goodbye on awareness, flush send queues, close every socket with 1001, flush the log."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        self._stopping = True
        await self._notify_changed()
        if self._server is not None:
            self._server.close(close_connections=False)
        goodbye = self._awareness.set_local(None)
        self._broadcast_awareness(goodbye)
        connections = list(self._connections)
        await asyncio.gather(*(conn.drain(SHUTDOWN_DRAIN) for conn in connections))
        for conn in connections:
            conn.closing = True
            conn.close_code = closecodes.GOING_AWAY
        await asyncio.gather(
            *(conn.ws.close(closecodes.GOING_AWAY, _close_reason(closecodes.GOING_AWAY)) for conn in connections),
            return_exceptions=True,
        )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._unsubscribe is not None:
            self._unsubscribe()
        await asyncio.to_thread(self.replica.flush)
        self.rejection_log.flush()
        log.info("event=stopped replica=%s", self.replica_id)

    async def __aenter__(self) -> Mesh:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _server_ssl(self) -> ssl.SSLContext | None:
        """TLS context for listening, if a certificate was given."""
        if self._certfile is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._certfile, self._keyfile)
        return context

    # -- presence -------------------------------------------------------------------------

    def set_presence(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Merge `fields` (what this agent works on) into our awareness state and broadcast it."""
        state = dict(self._awareness.local_state or {})
        state.update(fields)
        state[LINKS_KEY] = list(self._links)
        json.dumps(state, allow_nan=False)
        self._broadcast_awareness(self._awareness.set_local(state))
        return state

    def online(self) -> list[dict[str, Any]]:
        """Awareness states currently known: who is online and what they work on."""
        return self._awareness.online()

    # -- inbound --------------------------------------------------------------------------

    async def _handle_inbound(self, ws: ServerConnection) -> None:
        """Admit or refuse an accepted websocket, then serve it until it closes."""
        await self._accept(ws, self._admit)

    async def serve_admitted(self, ws: ServerConnection, *, read_only: bool) -> None:
        """Serve a websocket that a hub has already admitted (room routed, token checked)."""

        async def admitted(ws: ServerConnection, remote: str) -> bool:
            return read_only

        await self._accept(ws, admitted)

    async def _accept(self, ws: ServerConnection,
                      admit: Callable[[ServerConnection, str], Awaitable[bool | None]]) -> None:
        """Track an inbound websocket while it lives; `admit` says read-only or not, or None once refused."""
        remote = _format_address(ws.remote_address)
        self._inbound.add(ws)
        try:
            if self._stopping:
                await ws.close(closecodes.GOING_AWAY, _close_reason(closecodes.GOING_AWAY))
                return
            read_only = await admit(ws, remote)
            if read_only is None:
                return
            request = ws.request
            assert request is not None
            await self._serve_connection(ws, Role.LISTENER, name=remote, read_only=read_only,
                                         expects_hello=request.headers.get(HELLO_HEADER) == "1")
        finally:
            self._inbound.discard(ws)

    async def _admit(self, ws: ServerConnection, remote: str) -> bool | None:
        """The connection limit, the token and the room of a websocket this mesh listened for.

        Returns whether it is read-only, or None once refused (or handed to the claim arbiter)."""
        if len(self._inbound) > self.limits.max_connections:
            await self._refuse(ws, remote, closecodes.TRY_AGAIN_LATER, "connection_limit",
                               f"{self.limits.max_connections} connections already served")
            return None
        request = ws.request
        assert request is not None
        path, _, query = request.path.partition("?")
        access = self._auth.check(token_from_request(request.headers.get("Authorization"), query))
        if self.claim_handler is not None and request.headers.get(CLAIM_HEADER) == "1":
            await self.claim_handler(ws, access, self._room_matches(path))
            return None
        if not access.allowed:
            with suppress(ConnectionClosed):
                await ws.send(encode(AuthPermissionDenied(access.reason)))
            await self._refuse(ws, remote, closecodes.UNAUTHORIZED, "unauthorized", access.reason)
            return None
        if not self._room_matches(path):
            await self._refuse(ws, remote, closecodes.ROOM_MISMATCH, "room_mismatch", f"path {path[:200]}")
            return None
        return access.read_only

    def _room_matches(self, path: str) -> bool:
        """Whether a request path names our room (raw, as y-websocket sends it, or URL-encoded)."""
        name = path[1:] if path.startswith("/") else path
        return name == self.room or unquote(name) == self.room

    async def _refuse(self, ws: ServerConnection, peer: str, code: int, reason: str, detail: str) -> None:
        """Close a not-yet-served websocket with `code`, logging and counting the refusal."""
        self._log_rejection(peer, reason, code, detail)
        closing = asyncio.ensure_future(ws.close(code, _close_reason(code)))
        with suppress(Exception):
            async for _ in ws:
                pass
        with suppress(Exception):
            await closing

    # -- dialing --------------------------------------------------------------------------

    async def _dial_loop(self, target: DialTarget) -> None:
        """Keep one connection to `target` (transport.dialing.dial_loop), served by this mesh."""
        headers = {HELLO_HEADER: "1"}
        if self._peer_token is not None:
            headers["Authorization"] = f"Bearer {self._peer_token}"
        await dial_loop(
            target,
            reconnect=self.reconnect,
            connect_options={
                "additional_headers": headers,
                "max_size": self.limits.max_frame_size,
                "compression": None,
                "open_timeout": 10,
                "ping_interval": self.ping_interval,
                "close_timeout": self.close_timeout,
                "create_connection": _ClientConnection,
            },
            cafile=self._cafile,
            serve=lambda ws, target: self._serve_connection(ws, Role.DIALER, name=target.url, target=target),
            stopping=lambda: self._stopping,
            wait_unconnected=self._wait_unconnected,
        )

    async def _wait_unconnected(self, replica_id: str) -> None:
        """Wait until no live connection leads to `replica_id` (the other side's dial won)."""
        assert self._changed is not None
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._stopping
                or not any(c.peer_replica_id == replica_id and not c.closing for c in self._connections)
            )

    async def _notify_changed(self) -> None:
        """Wake dialers waiting for a connection to end."""
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    # -- one connection -------------------------------------------------------------------

    async def _serve_connection(
        self,
        ws: ServerConnection | ClientConnection,
        role: Role,
        *,
        name: str,
        read_only: bool = False,
        expects_hello: bool = False,
        target: DialTarget | None = None,
    ) -> int | None:
        """Run one connection to its end; return the close code it ended with."""
        session = Session(
            role,
            room=self.room,
            replica_id=self.replica_id,
            capabilities=CAPABILITIES if self.use_digest else frozenset(),
            peer_read_only=read_only,
            max_message_size=self.limits.max_frame_size,
        )
        self._sequence += 1
        origin = target.url if target is not None else f"yjs:{name}"
        conn = PeerConnection(
            ws, session, self.replica, self.limits,
            name=name, origin=origin, sequence=self._sequence,
            awareness_snapshot=self._awareness.encode_all, target=target, merger=self._merger,
        )
        if target is not None:
            target.connection = conn
        self._connections = (*self._connections, conn)
        log.info("event=connected peer=%s direction=%s read_only=%s", name, "dial" if role is Role.DIALER else "accept", read_only)
        release_timer: asyncio.TimerHandle | None = None
        try:
            state_vector = self.replica.state_vector()
            digest = await self._digests.opening() if self.use_digest and (target is not None or expects_hello) else None
            opening = session.start(state_vector, digest=digest)
            conn.start_state_vector, conn.start_digest = state_vector, digest
            snapshot = self._awareness.encode_all()
            if snapshot is not None:
                opening.append(session.send_awareness(snapshot))
            if expects_hello:
                conn.hold_opening(opening)
                release_timer = asyncio.get_running_loop().call_later(HELLO_WAIT, self._release_held, conn)
            else:
                conn.queue.put_front(opening)
                conn.start_writer()
            await self._read_loop(conn)
        finally:
            if release_timer is not None:
                release_timer.cancel()
            await self._forget(conn)
        return conn.close_code

    def _release_held(self, conn: PeerConnection) -> None:
        """The announced hello did not come in time: send the opening frames anyway."""
        if conn.holding and not conn.closing:
            conn.release_opening()

    async def _forget(self, conn: PeerConnection) -> None:
        """Tear down a finished connection: unregister, stop its writer, drop its awareness."""
        conn.closing = True
        if conn.close_code is None:
            received, sent = conn.ws.protocol.close_rcvd, conn.ws.protocol.close_sent
            conn.close_code = received.code if received is not None else (sent.code if sent is not None else None)
        self._connections = tuple(c for c in self._connections if c is not conn)
        conn.session.close()
        await conn.stop_writer()
        for key, value in conn.counters.items():
            self._totals[key] += value
        target: DialTarget | None = conn.target
        if target is not None:
            target.connection = None
            target.last_seen = conn.last_seen or target.last_seen
            target.known_state = conn.known_peer_state()
        removal = self._awareness.remove_via(conn.key)
        if removal is not None:
            self._broadcast_awareness(removal)
        self._advertise_links()
        log.info("event=disconnected peer=%s replica=%s code=%s", conn.name, conn.peer_replica_id, conn.close_code)
        await self._notify_changed()

    async def _read_loop(self, conn: PeerConnection) -> None:
        """Receive frames until the connection ends; once refused, drain (and drop) what still comes.

        Draining matters: websockets stops reading the socket while received frames wait,
        so a refusal that stopped consuming would never see the peer's close frame.
        """
        limiter = RateLimiter(self.limits)
        try:
            async for frame in conn.ws:
                if conn.closing:
                    continue
                size = len(frame)
                conn.counters["messages_in"] += 1
                conn.counters["bytes_in"] += size
                conn.last_seen = time.time()
                broken = limiter.admit(size)
                if broken is not None:
                    self._reject(conn, closecodes.RATE_LIMITED, "rate_limited", f"over the {broken} limit")
                    continue
                for event in conn.session.receive(frame):
                    if self._intake.stores_first and isinstance(event, (StepTwoReceived, UpdateReceived)):
                        if conn.holding:
                            conn.release_opening()
                        if isinstance(event, StepTwoReceived):
                            conn.repair_requested = False
                        if not await self._intake.store_then_apply(conn, event.update):
                            break
                    elif not self._on_event(conn, event):
                        break
        except ConnectionClosedError as error:
            sent = error.sent
            if sent is not None and sent.code == closecodes.FRAME_TOO_BIG and not conn.closing:
                conn.close_code = sent.code
                self._log_rejection(conn.name, "frame_too_big", sent.code, f"frame above {self.limits.max_frame_size} bytes")

    def _on_event(self, conn: PeerConnection, event: Event) -> bool:
        """Act on one Session event; False when the connection was closed because of it."""
        if conn.holding and not isinstance(event, (HelloReceived, ProtocolViolation)):
            conn.release_opening()
        match event:
            case ProtocolViolation(error=error, close_code=code):
                self._reject(conn, code, _REASON_OF_CODE.get(code, "protocol_error"), str(error))
                return False
            case HelloReceived(hello=hello, reply_frame=reply):
                return self._on_hello(conn, hello.replica_id, hello.digest, reply)
            case StepOneReceived(state_vector=state_vector):
                conn.step1_received += 1
                conn.note_peer_state(decode_state_vector(state_vector))
                empty = (
                    conn.step1_received == 1
                    and conn.peer_digest is not None
                    and conn.start_digest is not None
                    and hmac.compare_digest(conn.peer_digest, conn.start_digest)
                )
                if empty:
                    self._totals["digest_matches"] += 1
                conn.queue_step2(state_vector, empty=empty)
            case StepTwoReceived(update=update):
                conn.repair_requested = False
                return self._intake.apply(conn, update)
            case UpdateReceived(update=update):
                return self._intake.apply(conn, update)
            case Synced():
                conn.synced_at = time.time()
                target: DialTarget | None = conn.target
                if target is not None and target.backoff is not None:
                    target.backoff.reset()
            case AwarenessReceived(payload=payload):
                conn.links.learn(payload, conn.peer_replica_id)
                relay = self._awareness.apply(payload, via=conn.key)
                if relay is not None:
                    self._broadcast_awareness(relay, skip=conn)
            case AwarenessQueried():
                snapshot = self._awareness.encode_all()
                if snapshot is not None:
                    conn.queue_frame(conn.session.send_awareness(snapshot))
            case PermissionDenied(reason=reason):
                conn.counters["denied_by_peer"] += 1
                log.info("event=denied_by_peer peer=%s reason=%s", conn.name, json.dumps(reason[:200]))
            case UpdateRefused(reason=reason, reply_frame=reply):
                conn.queue_frame(reply)
                conn.read_only_strikes += 1
                self._log_rejection(conn.name, "read_only_update", None, reason)
                if conn.read_only_strikes >= self.limits.read_only_strikes:
                    self._reject(conn, closecodes.FORBIDDEN, "read_only_writes",
                                       f"{conn.read_only_strikes} refused writes")
                    return False
        return True

    def _on_hello(self, conn: PeerConnection, replica_id: str, digest: bytes | None, reply: bytes | None) -> bool:
        """Name the peer, answer its hello, and keep only one connection per pair of nodes."""
        conn.peer_replica_id = replica_id
        conn.peer_digest = digest
        conn.origin = replica_id
        target: DialTarget | None = conn.target
        if target is not None:
            target.replica_id = replica_id
        if replica_id == self.replica_id:
            if target is not None:
                target.is_self = True
            self._reject(conn, closecodes.DUPLICATE_CONNECTION, "self_connection", "the peer is this node")
            return False
        if reply is not None:
            if conn.holding:
                conn.release_opening([reply])
            else:
                conn.queue_frame(reply, essential=True)
        elif conn.holding:
            conn.release_opening()
        for other in self._connections:
            if other is conn or other.closing or other.peer_replica_id != replica_id:
                continue
            if self._keep(conn, other) is other:
                self._close(conn, closecodes.DUPLICATE_CONNECTION, "duplicate")
                return False
            self._close(other, closecodes.DUPLICATE_CONNECTION, "duplicate")
        self._advertise_links()
        return True

    def _spawn(self, coroutine: Any) -> None:
        """Run `coroutine` in the background, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _keep(self, a: PeerConnection, b: PeerConnection) -> PeerConnection:
        """Of two connections to one node, the one both ends keep: dialed by the lower replica id.

        If both were dialed by the same node, keep the newer (the older is likely dead).
        """
        low = min(self.replica_id, a.peer_replica_id or "")
        a_wins = (self.replica_id if a.role is Role.DIALER else a.peer_replica_id) == low
        b_wins = (self.replica_id if b.role is Role.DIALER else b.peer_replica_id) == low
        if a_wins != b_wins:
            return a if a_wins else b
        return a if a.sequence > b.sequence else b

    def _reject(self, conn: PeerConnection, code: int, reason: str, detail: str) -> None:
        """Refuse a peer's input: one log line, one count, close with `code`."""
        if conn.closing:
            return
        self._log_rejection(conn.name, reason, code, detail)
        self._close(conn, code, reason)

    def _close(self, conn: PeerConnection, code: int, why: str) -> None:
        """Start closing a connection with `code` (once); its read loop drains until the end."""
        if conn.closing:
            return
        conn.closing = True
        conn.close_code = code
        if why == "duplicate":
            log.info("event=duplicate_closed peer=%s replica=%s code=%d", conn.name, conn.peer_replica_id, code)
            self._totals["duplicates_closed"] += 1
        self._spawn(conn.ws.close(code, _close_reason(code)))

    def _log_rejection(self, peer: str, reason: str, code: int | None, detail: str) -> None:
        """The counter every rejected input gets, and a structured line at a bounded rate per reason."""
        self._rejections[reason] += 1
        self.rejection_log.warning(
            reason, "event=rejected reason=%s peer=%s code=%s detail=%s",
            reason, peer, code if code is not None else "-", json.dumps(detail[:300]),
        )

    # -- relaying -------------------------------------------------------------------------

    def _on_replica_update(self, update: bytes, origin: str | None) -> None:
        """Replica listener (any thread): queue the change for every peer but its origin and
        those its origin reaches directly (transport.relay; local writes go to everyone)."""
        self._digests.changed()
        connections = self._connections
        source = None
        if origin is not None:
            source = next((conn for conn in connections if conn.origin == origin and not conn.closing), None)
        for conn in connections:
            if conn.origin == origin or conn.closing:
                continue
            if source is not None and reaches_directly(source, conn):
                conn.counters["relays_skipped"] += 1
                continue
            conn.queue_update(update)

    def _advertise_links(self) -> None:
        """Tell every neighbour whom we are connected to, when that changed; after losing a link,
        ask every agentstate neighbour for what we lack (a step 1), which repairs any update
        the relay rule sent only over the lost link. Both go out in that order, and survive
        a send-queue overflow."""
        if self._stopping:
            return
        links = live_links(conn for conn in self._connections if not conn.closing)
        if links == self._links:
            return
        lost = not set(self._links) <= set(links)
        self._links = links
        state = dict(self._awareness.local_state or {})
        state[LINKS_KEY] = list(links)
        payload = self._awareness.set_local(state)
        state_vector = self.replica.state_vector() if lost else b""
        for conn in self._connections:
            if conn.closing:
                continue
            with suppress(SessionUsageError):
                conn.queue_frame(conn.session.send_awareness(payload), essential=True)
                if lost and conn.session.peer_hello is not None:
                    conn.counters["link_repairs"] += 1
                    conn.queue_frame(conn.session.send_step1(state_vector), essential=True)

    def _broadcast_awareness(self, payload: bytes, skip: PeerConnection | None = None) -> None:
        """Queue an awareness update for every connection except `skip`."""
        for conn in self._connections:
            if conn is skip or conn.closing:
                continue
            with suppress(SessionUsageError):
                conn.queue_frame(conn.session.send_awareness(payload))

    async def _awareness_loop(self) -> None:
        """Renew our awareness state and expire silent ones, every `awareness_interval` seconds."""
        while True:
            await asyncio.sleep(self.awareness_interval)
            self._awareness.expire()
            renewal = self._awareness.renew_local()
            if renewal is not None:
                self._broadcast_awareness(renewal)

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Peers (connected or not, last seen, how far behind), who is online, rejections, traffic."""
        ours = decode_state_vector(self.replica.state_vector())
        peers: list[dict[str, Any]] = []
        totals = Counter(self._totals)
        for conn in self._connections:
            view = conn.describe(ours)
            target: DialTarget | None = conn.target
            view.update(connected=True, url=target.url if target is not None else None, remote=conn.name)
            peers.append(view)
            for key, value in conn.counters.items():
                totals[key] += value
        live = set(self._connections)
        peers += [target.describe(ours) for target in self._targets if target.connection not in live]
        return {
            "replica_id": self.replica_id,
            "room": self.room,
            "listening": self.url,
            "tls": self._certfile is not None,
            "token_required": self._auth.required,
            "peers": peers,
            "online": self._awareness.online(),
            "rejections": dict(self._rejections),
            "totals": {
                "bytes_in": totals["bytes_in"],
                "bytes_out": totals["bytes_out"],
                "messages_in": totals["messages_in"],
                "messages_out": totals["messages_out"],
                "resyncs": totals["resyncs"],
                "digest_matches": totals["digest_matches"],
                "duplicates_closed": totals["duplicates_closed"],
                "split_updates": totals["split_updates"],
                "updates_in": totals["updates_applied"] + totals["updates_redundant"],
                "updates_out": totals["update_frames_out"] + totals["step2_frames_out"],
            },
        }
