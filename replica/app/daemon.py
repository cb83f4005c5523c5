"""Daemon: holds a data directory, runs the replica, and serves commands and services until told to stop.

Services (the transport's mesh, for one) come from `replica.services`, so this module
never imports them; it only starts, stops and asks them for status. Commands arrive on
the control socket (`ControlServer`, wire format in `replica.app.control`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from compat.layout import upgrade_on_open
from replica.durability import Durability
from replica.errors import ReplicaError
from replica.replica import Replica
from replica.services import Service, register_service, start_services, stop_services

from . import commands
from .control import (
    ENDPOINT_FILE,
    MAX_HEADER,
    claim_daemon_lock,
    SOCKET_FILE,
    Endpoint,
    RequestError,
    parse_body,
    parse_header,
    refusal,
    socket_address,
)
from .exitcodes import ExitCode, exit_code_for

__all__ = ["ControlServer", "Daemon", "Service", "error_reply", "register_service"]

log = logging.getLogger(__name__)

Dispatch = Callable[[str, dict[str, Any], "str | None"], Awaitable[Any]]
"""Runs (command, params, idempotency key or None) and returns the result."""
MAX_CONNECTIONS = 16
"""Control connections served at once; more are refused (the CLI opens one per command)."""
HEADER_TIMEOUT = 5.0
"""Seconds a connection may take to send its header line (a client sends it at once)."""
CLAIM_PATIENCE = 1.0
"""Seconds a starting daemon waits for the daemon lock when no live daemon is published (a CLI
removing a stale daemon.json holds it for an instant)."""
BODY_TIMEOUT = 30.0
"""Seconds an authenticated client may take to send its body (64 MiB takes well under one)."""


def _alive(pid: int) -> bool:
    """True if process `pid` exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def error_reply(exc: BaseException) -> dict[str, Any]:
    """How a failed command travels back to the CLI."""
    return {"type": type(exc).__name__, "message": str(exc), "exit_code": int(exit_code_for(exc))}


def new_token() -> str:
    """A fresh random bearer token for the control channel."""
    return secrets.token_urlsafe(24)


def peer_uid(sock: Any) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED, Linux)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", raw)[1])


class ControlServer:
    """One request per connection on an owner-only Unix socket; strangers are refused before they are read.

    Order of checks: connection cap, the caller's uid, a header of at most MAX_HEADER
    bytes within HEADER_TIMEOUT, the token, the announced body size, then the body
    (within BODY_TIMEOUT) and its nesting depth. Each refusal is one JSON error line.
    """

    def __init__(self, path: Path, token: str, dispatch: Dispatch,
                 error_reply: Callable[[BaseException], dict[str, Any]], *, owner_uid: int | None = None,
                 max_connections: int = MAX_CONNECTIONS, header_timeout: float = HEADER_TIMEOUT,
                 body_timeout: float = BODY_TIMEOUT) -> None:
        self.path = path
        self.token = token
        self.owner_uid = os.getuid() if owner_uid is None else owner_uid
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self._dispatch = dispatch
        self._error_reply = error_reply
        self._server: asyncio.Server | None = None
        self._active = 0

    async def start(self) -> None:
        """Listen on `path` (mode 0600 from the start), replacing a socket a killed daemon left behind."""
        try:
            mode = self.path.lstat().st_mode
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(mode):
                raise ReplicaError(f"{self.path} exists and is not a socket; move it away to start the daemon")
            self.path.unlink()
        address, dir_fd = socket_address(str(self.path))
        previous = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._handle, path=address, limit=MAX_HEADER)
        finally:
            os.umask(previous)
            if dir_fd is not None:
                os.close(dir_fd)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        """Stop listening, close connections and remove the socket file."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.path.unlink(missing_ok=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= self.max_connections:
            await self._send(writer, refusal(
                f"too many control connections (at most {self.max_connections}); try again", ExitCode.UNREACHABLE))
            return
        self._active += 1
        try:
            await self._send(writer, await self._answer(reader, writer))
        finally:
            self._active -= 1

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        uid = peer_uid(writer.get_extra_info("socket"))
        if uid != self.owner_uid:
            return refusal(f"uid {uid} may not use this daemon (it serves uid {self.owner_uid} only)",
                           ExitCode.UNREACHABLE)
        try:
            try:
                header = await asyncio.wait_for(reader.readuntil(b"\n"), self.header_timeout)
            except asyncio.LimitOverrunError:
                raise RequestError(f"bad request: header line longer than {MAX_HEADER} bytes") from None
            except asyncio.IncompleteReadError:
                raise RequestError("bad request: the connection closed before a full header line") from None
            except asyncio.TimeoutError:
                raise RequestError(f"timed out: no header line within {self.header_timeout:g} s") from None
            token, length = parse_header(header)
            if not hmac.compare_digest(token.encode(), self.token.encode()):
                raise RequestError("wrong control token (read it from daemon.json in the data directory)",
                                   ExitCode.UNREACHABLE)
            try:
                body = await asyncio.wait_for(reader.readexactly(length), self.body_timeout)
            except asyncio.IncompleteReadError:
                raise RequestError(f"bad request: the connection closed before the {length}-byte body") from None
            except asyncio.TimeoutError:
                raise RequestError(f"timed out: the body did not arrive within {self.body_timeout:g} s") from None
            command, params, key = parse_body(body)
            del body
        except RequestError as exc:
            return refusal(str(exc), exc.exit_code)
        try:
            result = await self._dispatch(command, params, key)
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            return json_line({"ok": False, "error": self._error_reply(exc)})
        return json_line({"ok": True, "result": result})

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, line: bytes) -> None:
        try:
            writer.write(line)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def json_line(reply: dict[str, Any]) -> bytes:
    """A reply as one JSON line."""
    return json.dumps(reply).encode() + b"\n"


class Daemon:
    """Owns one replica for the life of `agentstate serve`."""

    def __init__(self, path: Path | str, *, durability: Durability | str = Durability.BALANCED,
                 options: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.durability = Durability.parse(durability)
        self.options = options or {}
        self.replica: Replica | None = None
        self.services: list[Service] = []
        self.started_at = datetime.now(timezone.utc).isoformat()
        self.control: ControlServer | None = None
        self._stop = asyncio.Event()
        self._endpoint_path: Path | None = None
        self._claim: int | None = None

    async def dispatch(self, name: str, params: dict[str, Any], key: str | None = None) -> Any:
        """Run a command: service commands first (reads), then the replica's own, off the event loop.

        A write's idempotency `key` goes to `commands.execute`: a retry of a request this or
        any other process already ran returns the stored result and writes nothing."""
        assert self.replica is not None
        for service in self.services:
            handler = getattr(service, "commands", {}).get(name) if hasattr(service, "commands") else None
            if handler is not None:
                result = handler(params)
                return await result if asyncio.iscoroutine(result) else result
        result = await asyncio.to_thread(commands.execute, self.replica, name, params, key=key)
        if name == "status":
            result["daemon"] = {"pid": os.getpid(), "started_at": self.started_at,
                                "socket": str(self.control.path) if self.control else None}
            for service in self.services:
                result[service.name] = service.status()
        return result

    def service_status(self) -> dict[str, Any]:
        """Each running service's status, by service name (what `serve` prints its addresses from)."""
        return {service.name: service.status() for service in self.services}

    def request_stop(self) -> None:
        """Ask `run` to shut down gracefully (safe from signal handlers)."""
        self._stop.set()

    async def run(self, ready: Callable[[Daemon], None] | None = None) -> None:
        """Claim the directory's daemon lock, open, serve until stopped, then flush and release everything.

        Opening never waits: any number of processes may have the directory open."""
        self._claim_directory()
        try:
            self.replica = Replica.open(self.path, durability=self.durability)
        except BaseException:
            self._release_claim()
            raise
        try:
            for line in self.replica.open_report.warnings:
                log.warning("recovery: %s", line)
            for line in upgrade_on_open(self.replica):
                log.warning("compat upgrade left in its snapshot: %s", line)
            assert self.replica.datadir is not None
            home = self.replica.datadir.path
            self.control = ControlServer(home / SOCKET_FILE, new_token(), self.dispatch, error_reply)
            await self.control.start()
            self._endpoint_path = home / ENDPOINT_FILE
            Endpoint(str(self.control.path), self.control.token, os.getpid()).write(self._endpoint_path)
            self.services = await start_services(self.replica, self.options)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self.request_stop)
                except (NotImplementedError, RuntimeError):
                    pass
            log.info("serving replica %s from %s (control socket %s)", self.replica.replica_id, home,
                     self.control.path)
            if ready is not None:
                ready(self)
            await self._stop.wait()
        finally:
            await self._shutdown()

    def _claim_directory(self) -> None:
        """Take the daemon lock, or say which daemon already serves this directory."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        other = Endpoint.read(self.path / ENDPOINT_FILE)
        if other is not None and not _alive(other.pid):
            other = None
        self._claim = claim_daemon_lock(self.path, patience=0.0 if other is not None else CLAIM_PATIENCE)
        if self._claim is None:
            who = f" (pid {other.pid})" if other is not None else ""
            raise ReplicaError(f"another `agentstate serve`{who} is already serving {self.path}; "
                               "one daemon per directory")

    def _release_claim(self) -> None:
        """Let the next `serve` have the directory (the kernel does the same if this process dies)."""
        if self._claim is not None:
            os.close(self._claim)
            self._claim = None

    async def _shutdown(self) -> None:
        await stop_services(self.services)
        self.services.clear()
        if self._endpoint_path is not None:
            self._endpoint_path.unlink(missing_ok=True)
        if self.control is not None:
            await self.control.stop()
        try:
            if self.replica is not None:
                self.replica.close()
                log.info("replica %s flushed and closed", self.replica.replica_id)
        finally:
            self._release_claim()
