"""A hub: many rooms behind one listening socket, as y-websocket's server serves any room.

The URL path names the room. A room is opened from its `RoomStore` on its first
connection, served by its own `Mesh` (no listener of its own: the hub hands it each
websocket it has routed and authenticated), and closed once it has had no connection for
`HubLimits.idle_seconds`. Limits on rooms, connections and memory refuse with 1013 (the
client retries later); a bad room name or token refuses with a 44xx code (it stops).
"""

from __future__ import annotations

import asyncio
import ctypes
import fnmatch
import gc
import hmac
import json
import logging
import os
import ssl
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from websockets.asyncio.server import Server, ServerConnection, serve

from transport import closecodes
from transport.auth import Access, InsecureListenError, is_loopback, token_from_request
from transport.board import add_hub_board_routes
from transport.http import HttpRoutes
from transport.limits import Limits
from transport.mesh import Mesh
from transport.messages import AuthPermissionDenied, encode
from transport.metrics import ServerMetrics, add_health_routes, add_metrics_routes
from transport.ratelog import RateLimitedLog
from transport.rooms import InvalidRoomError, OpenRoom, RoomStore, room_from_path

log = logging.getLogger("agentstate.hub")

REFRESH_INTERVAL = 0.05
"""Seconds between checks for other local processes' writes to loaded rooms (one thread for all)."""

MAX_CLOSE_REASON = 123
"""Bytes of UTF-8 a websocket close frame's reason may hold (RFC 6455: 125 minus the code)."""

TRIM_DELAY = 1.0
"""Seconds after the last room unloads before freed memory is handed back to the system."""


@dataclass(frozen=True)
class RoomGrant:
    """A token and what it opens: rooms matching any of `rooms` (shell patterns), read-only or not."""

    token: str
    rooms: tuple[str, ...] = ("*",)
    read_only: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.token, str) or not self.token:
            raise ValueError("a token must be a non-empty string")
        if not self.rooms or not all(isinstance(room, str) and room for room in self.rooms):
            raise ValueError("a token's rooms must be a non-empty list of room names or patterns")

    def covers(self, room: str) -> bool:
        """Whether this grant opens `room`."""
        return any(fnmatch.fnmatchcase(room, pattern) for pattern in self.rooms)


class HubAuth:
    """Tokens scoped to rooms; with none configured, everyone may read and write every room."""

    def __init__(self, grants: Iterable[RoomGrant] = ()) -> None:
        self.grants = tuple(grants)

    @property
    def required(self) -> bool:
        """True when a client must present a token."""
        return bool(self.grants)

    def check(self, presented: str | None, room: str) -> Access:
        """What `presented` allows in `room`; every grant is compared in constant time."""
        if not self.required:
            return Access(True, False, "no token required")
        if presented is None:
            return Access(False, False, "missing token")
        candidate = presented.encode("utf-8", "surrogatepass")
        read_write = read_only = matched_elsewhere = False
        for grant in self.grants:
            same = hmac.compare_digest(candidate, grant.token.encode("utf-8"))
            covers = grant.covers(room)
            read_write |= same and covers and not grant.read_only
            read_only |= same and covers and grant.read_only
            matched_elsewhere |= same and not covers
        if read_write:
            return Access(True, False, "read-write token")
        if read_only:
            return Access(True, True, "read-only token")
        if matched_elsewhere:
            return Access(False, False, f"token not valid for room {room[:100]!r}")
        return Access(False, False, "wrong token")

    @classmethod
    def from_file(cls, path: Path | str) -> HubAuth:
        """Grants from a JSON file: [{"token": "...", "rooms": ["proj-*"], "access": "read-write"|"read-only"}]."""
        try:
            entries = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read tokens file {path}: {error}") from None
        if not isinstance(entries, list):
            raise ValueError(f"tokens file {path}: expected a JSON list of grants")
        grants = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or set(entry) - {"token", "rooms", "access"}:
                raise ValueError(f"tokens file {path}: grant {index} must be an object with token, rooms, access")
            access = entry.get("access", "read-write")
            if access not in ("read-write", "read-only"):
                raise ValueError(f"tokens file {path}: grant {index}: access must be read-write or read-only")
            rooms = entry.get("rooms", ["*"])
            if isinstance(rooms, str) or not isinstance(rooms, list):
                raise ValueError(f"tokens file {path}: grant {index}: rooms must be a list")
            try:
                grants.append(RoomGrant(entry.get("token"), tuple(rooms), access == "read-only"))
            except ValueError as error:
                raise ValueError(f"tokens file {path}: grant {index}: {error}") from None
        return cls(grants)


@dataclass(frozen=True)
class HubLimits:
    """Bounds of a hub; each refusal closes with 1013 and a reason the client can log."""

    max_rooms: int = 1000
    """Rooms loaded at once; a connection to one more is refused."""
    max_connections: int = 4096
    """Websocket connections served at once over all rooms."""
    max_room_connections: int = 256
    """Connections served at once in one room."""
    max_memory_bytes: int | None = None
    """Resident memory above which no further room is loaded (None: no bound)."""
    idle_seconds: float = 30.0
    """A room with no connection for this long is closed and its memory returned."""
    peer: Limits = field(default_factory=lambda: Limits(max_connections=1_000_000))
    """Per-connection bounds (frame size, rates, queues) every room's Mesh applies."""

    def __post_init__(self) -> None:
        for name in ("max_rooms", "max_connections", "max_room_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.idle_seconds < 0:
            raise ValueError("idle_seconds must not be negative")
        if self.max_memory_bytes is not None and self.max_memory_bytes < 1:
            raise ValueError("max_memory_bytes must be positive")


class HubRefusal(Exception):
    """A connection the hub will not serve: the close code, a short reason and a detail for the log."""

    def __init__(self, code: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.reason, self.detail = code, reason, detail


def return_free_memory() -> None:
    """Ask glibc to hand freed heap pages back to the system (a no-op elsewhere)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def _close_reason_text(text: str) -> str:
    """`text` cut to what a close frame carries (123 bytes of UTF-8), never splitting a character."""
    return text.encode("utf-8")[:MAX_CLOSE_REASON].decode("utf-8", "ignore")


def _format_address(address: Any) -> str:
    """host:port of a peer socket address, for logs."""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def resident_memory() -> int | None:
    """This process's resident set size in bytes (Linux /proc), or None where unknown."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class LoadedRoom:
    """A room while it is loaded: its state, the Mesh serving it, and who is connected."""

    name: str
    opened: OpenRoom
    mesh: Mesh
    loaded_at: float
    clients: int = 0
    idle_timer: asyncio.TimerHandle | None = None


class Hub:
    """Serves any room on one address (see module docstring)."""

    def __init__(
        self,
        store: RoomStore,
        *,
        listen: tuple[str, int],
        auth: HubAuth | None = None,
        limits: HubLimits | None = None,
        routes: HttpRoutes | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        allow_insecure_public: bool = False,
        ping_interval: float | None = 20.0,
        close_timeout: float = 5.0,
        refresh_interval: float = REFRESH_INTERVAL,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.store = store
        self.listen = listen
        self.auth = auth or HubAuth()
        self.limits = limits or HubLimits()
        self.routes = routes if routes is not None else HttpRoutes()
        self.ping_interval = ping_interval
        self.close_timeout = close_timeout
        self.refresh_interval = refresh_interval
        self._certfile, self._keyfile = certfile, keyfile
        if not (is_loopback(listen[0]) or self.auth.required or allow_insecure_public):
            raise InsecureListenError(
                f"refusing to listen on {listen[0]!r} without a token: anyone who can reach it could read and "
                "write every room; give tokens, listen on 127.0.0.1, or pass the explicit override"
            )
        self._rooms: dict[str, LoadedRoom] = {}
        self._loading: dict[str, asyncio.Future[LoadedRoom]] = {}
        self._unloading: dict[str, asyncio.Task[None]] = {}
        self._connections = 0
        self._refusals: Counter[str] = Counter()
        self._refusal_log = RateLimitedLog(log)
        self._rooms_opened = 0
        self._rooms_closed = 0
        self._server: Server | None = None
        self._address: tuple[str, int] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._trim_timer: asyncio.TimerHandle | None = None
        self._stopping = False
        self.metrics = metrics if metrics is not None else ServerMetrics()
        add_metrics_routes(self.routes, self.metrics)
        self.metrics.count_rejections_from(lambda: self._refusals)
        store_rejections = getattr(store, "rejections", None)
        if callable(store_rejections):
            self.metrics.count_rejections_from(store_rejections)
        add_health_routes(self.routes, self._not_ready)
        add_hub_board_routes(self.routes, self.auth)

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) listened on, the port resolved when 0 was asked."""
        return self._address

    def url(self, room: str) -> str:
        """The ws:// or wss:// URL of `room` on this hub."""
        if self._address is None:
            raise RuntimeError("hub is not listening")
        host, port = self._address
        host = f"[{host}]" if ":" in host else host
        scheme = "wss" if self._certfile else "ws"
        return f"{scheme}://{host}:{port}/{quote(room, safe='')}"

    async def start(self) -> None:
        """Listen; rooms open as clients arrive."""
        context = None
        if self._certfile is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self._certfile, self._keyfile)
        self._server = await serve(
            self._handle,
            *self.listen,
            ssl=context,
            max_size=self.limits.peer.max_frame_size,
            compression=None,
            ping_interval=self.ping_interval,
            close_timeout=self.close_timeout,
            process_request=self.routes.process_request,
        )
        sockname = self._server.sockets[0].getsockname()
        self._address = (sockname[0], sockname[1])
        self._refresher = asyncio.create_task(self._refresh_loop(), name="agentstate-hub-refresh")
        log.info("event=hub_listening address=%s:%s", *self._address)

    async def stop(self) -> None:
        """Stop accepting, close every room (each Mesh says goodbye with 1001), then the store."""
        if self._stopping:
            return
        self._stopping = True
        if self._server is not None:
            self._server.close(close_connections=False)
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        if self._refresher is not None:
            self._refresher.cancel()
            with suppress(asyncio.CancelledError):
                await self._refresher
        for loading in list(self._loading.values()):
            with suppress(Exception):
                await loading
        await asyncio.gather(*self._unloading.values(), return_exceptions=True)
        rooms = list(self._rooms.values())
        self._rooms.clear()
        await asyncio.gather(*(self._close_room(room) for room in rooms), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        await self.store.close()
        self._refusal_log.flush()
        log.info("event=hub_stopped")

    async def __aenter__(self) -> Hub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- connections ----------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        """Route a websocket to its room (opening it if needed), or refuse it with a clear code."""
        self._connections += 1
        room: LoadedRoom | None = None
        try:
            request = ws.request
            assert request is not None
            room_name, access = self._admit(request.path, request.headers.get("Authorization"))
            room = await self._acquire(room_name)
            await room.mesh.serve_admitted(ws, read_only=access.read_only)
        except HubRefusal as refusal:
            await self._refuse(ws, refusal)
        finally:
            self._connections -= 1
            if room is not None:
                self._release(room)

    def _admit(self, path: str, authorization: str | None) -> tuple[str, Access]:
        """Check the hub-wide limits, the room name and the token before anything is loaded."""
        if self._stopping:
            raise HubRefusal(closecodes.GOING_AWAY, "stopping", "hub is stopping")
        if self._connections > self.limits.max_connections:
            raise HubRefusal(closecodes.TRY_AGAIN_LATER, "connection_limit",
                             f"{self.limits.max_connections} connections already served")
        try:
            room_name = room_from_path(path)
        except InvalidRoomError as error:
            raise HubRefusal(closecodes.ROOM_MISMATCH, "invalid_room", str(error)) from None
        access = self.auth.check(token_from_request(authorization, path.partition("?")[2]), room_name)
        if not access.allowed:
            raise HubRefusal(closecodes.UNAUTHORIZED, "unauthorized", access.reason)
        return room_name, access

    async def _refuse(self, ws: ServerConnection, refusal: HubRefusal) -> None:
        """Close a websocket the hub will not serve, counting it and logging why at a bounded rate.

        A token refusal first sends y-websocket's permission-denied message, as `serve` does."""
        self._refusals[refusal.reason] += 1
        self._refusal_log.log(logging.INFO, refusal.reason, "event=refused peer=%s reason=%s code=%d detail=%s",
                              _format_address(ws.remote_address), refusal.reason, refusal.code,
                              json.dumps(refusal.detail[:200]))
        reason = closecodes.REASONS.get(refusal.code, "refused")
        if refusal.reason != "stopping":
            reason = _close_reason_text(f"{reason}: {refusal.detail}")
        with suppress(Exception):
            if refusal.code == closecodes.UNAUTHORIZED:
                await ws.send(encode(AuthPermissionDenied(refusal.detail)))
            await ws.close(refusal.code, reason)

    # -- rooms ----------------------------------------------------------------------------

    async def _acquire(self, name: str) -> LoadedRoom:
        """The loaded room `name` with one more client counted; loads it (once) if needed."""
        while True:
            room = self._rooms.get(name)
            if room is not None:
                if room.clients >= self.limits.max_room_connections:
                    raise HubRefusal(closecodes.TRY_AGAIN_LATER, "room_connection_limit",
                                     f"room has {self.limits.max_room_connections} connections already")
                room.clients += 1
                if room.idle_timer is not None:
                    room.idle_timer.cancel()
                    room.idle_timer = None
                return room
            unloading = self._unloading.get(name)
            if unloading is not None:
                if unloading.done():  # awaiting a done task would not yield: its cleanup callback never ran
                    self._unloading.pop(name, None)
                else:
                    with suppress(Exception):  # a failed close was logged; the room reopens anyway
                        await asyncio.shield(unloading)
                continue
            loading = self._loading.get(name)
            if loading is not None:
                await asyncio.shield(loading)
                continue
            self._check_room_capacity()
            future: asyncio.Future[LoadedRoom] = asyncio.get_running_loop().create_future()
            self._loading[name] = future
            try:
                room = await self._load(name)
            except BaseException as error:
                future.set_exception(error if isinstance(error, Exception) else RuntimeError("cancelled"))
                future.exception()
                raise
            finally:
                del self._loading[name]
            self._rooms[name] = room
            future.set_result(room)

    def _check_room_capacity(self) -> None:
        """Refuse to load one more room past the room or memory bound."""
        if len(self._rooms) + len(self._loading) >= self.limits.max_rooms:
            raise HubRefusal(closecodes.TRY_AGAIN_LATER, "room_limit",
                             f"{self.limits.max_rooms} rooms loaded already")
        bound = self.limits.max_memory_bytes
        if bound is not None:
            used = resident_memory()
            if used is not None and used > bound:
                raise HubRefusal(closecodes.TRY_AGAIN_LATER, "memory_limit",
                                 f"hub uses {used // 2**20} MiB, above its {bound // 2**20} MiB bound")

    async def _load(self, name: str) -> LoadedRoom:
        """Open the room from the store and start its Mesh."""
        started = time.perf_counter()
        try:
            opened = await self.store.open(name)
        except InvalidRoomError as error:
            raise HubRefusal(closecodes.ROOM_MISMATCH, "invalid_room", str(error)) from None
        except Exception as error:
            log.exception("event=room_open_failed room=%s", json.dumps(name[:100]))
            raise HubRefusal(closecodes.TRY_AGAIN_LATER, "room_unavailable", f"room could not be opened: {error}") from None
        mesh = Mesh(
            opened.replica,
            room=name,
            limits=self.limits.peer,
            follow=False,
            before_apply=opened.before_apply,
            ping_interval=self.ping_interval,
            close_timeout=self.close_timeout,
        )
        try:
            await mesh.start()
        except BaseException:
            await opened.close()
            raise
        self.metrics.watch(mesh)
        self._rooms_opened += 1
        log.info("event=room_loaded room=%s seconds=%.4f", json.dumps(name[:100]), time.perf_counter() - started)
        return LoadedRoom(name=name, opened=opened, mesh=mesh, loaded_at=time.time())

    def _release(self, room: LoadedRoom) -> None:
        """One client fewer; the last one arms the idle timer that unloads the room."""
        room.clients -= 1
        if room.clients > 0 or self._stopping or self._rooms.get(room.name) is not room:
            return
        loop = asyncio.get_running_loop()
        room.idle_timer = loop.call_later(self.limits.idle_seconds, self._start_unload, room)

    def _start_unload(self, room: LoadedRoom) -> None:
        """The idle timer fired: close the room unless a client came back meanwhile."""
        room.idle_timer = None
        if room.clients > 0 or self._rooms.get(room.name) is not room or self._stopping:
            return
        del self._rooms[room.name]
        task = asyncio.ensure_future(self._close_room(room))
        self._unloading[room.name] = task

        def done(_: asyncio.Future[None]) -> None:
            if self._unloading.get(room.name) is task:
                del self._unloading[room.name]

        task.add_done_callback(done)

    async def _close_room(self, room: LoadedRoom) -> None:
        """Stop the room's Mesh and close its state."""
        if room.idle_timer is not None:
            room.idle_timer.cancel()
        try:
            await room.mesh.stop()
        finally:
            self.metrics.unwatch(room.mesh)
            await room.opened.close()
        self._rooms_closed += 1
        log.info("event=room_unloaded room=%s", json.dumps(room.name[:100]))
        if not self._stopping:
            if self._trim_timer is not None:
                self._trim_timer.cancel()
            self._trim_timer = asyncio.get_running_loop().call_later(TRIM_DELAY, self._trim)

    def _trim(self) -> None:
        """Unloads have settled: collect cycles and return the freed heap, so idle rooms cost nothing."""
        self._trim_timer = None
        gc.collect()
        return_free_memory()

    async def _refresh_loop(self) -> None:
        """Relay other local processes' writes to loaded rooms (one thread for all rooms, not one each)."""
        while True:
            await asyncio.sleep(self.refresh_interval)
            replicas = [room.opened.replica for room in self._rooms.values()]
            if replicas:
                await asyncio.to_thread(_refresh_all, replicas)

    # -- views ----------------------------------------------------------------------------

    def room(self, name: str) -> LoadedRoom | None:
        """The loaded room `name`, if loaded."""
        return self._rooms.get(name)

    def rooms(self) -> list[str]:
        """Names of the loaded rooms."""
        return sorted(self._rooms)

    def status(self) -> dict[str, Any]:
        """Rooms, connections, refusals and memory (JSON-able)."""
        return {
            "listening": None if self._address is None else "%s:%d" % self._address,
            "token_required": self.auth.required,
            "connections": self._connections,
            "rooms_loaded": len(self._rooms),
            "rooms_opened": self._rooms_opened,
            "rooms_closed": self._rooms_closed,
            "rooms": {name: {"clients": room.clients, "loaded_at": room.loaded_at}
                      for name, room in sorted(self._rooms.items())},
            "refusals": dict(self._refusals),
            "memory_bytes": resident_memory(),
            "limits": {"max_rooms": self.limits.max_rooms, "max_connections": self.limits.max_connections,
                       "max_room_connections": self.limits.max_room_connections,
                       "max_memory_bytes": self.limits.max_memory_bytes, "idle_seconds": self.limits.idle_seconds},
        }

    def _not_ready(self) -> list[str]:
        """Why the hub cannot serve now (empty when ready): not listening yet, or stopping."""
        if self._stopping:
            return ["stopping"]
        if self._server is None:
            return ["not listening"]
        return []


def _refresh_all(replicas: Iterable[Any]) -> None:
    """Catch each replica up on other processes' appends (cheap when nothing changed)."""
    for replica in replicas:
        with suppress(Exception):
            replica.refresh()


def room_grants(pairs: Mapping[str, str], *, read_only: bool = False) -> list[RoomGrant]:
    """Grants from PATTERN -> TOKEN pairs (the `--room-token PATTERN=TOKEN` options)."""
    return [RoomGrant(token, (pattern,), read_only) for pattern, token in pairs.items()]
