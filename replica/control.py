"""The daemon's control channel: one JSON request and one JSON reply per line, over loopback TCP.

`agentstate` commands on a directory held by `agentstate serve` go through it. Only a
client that can read the directory's daemon.json (mode 0600) learns the port and token.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ReplicaError

MAX_LINE = 64 * 1024 * 1024
Dispatch = Callable[[str, dict[str, Any]], Awaitable[Any]]


class ControlError(ReplicaError):
    """The daemon could not be reached, or its reply was unusable."""


class RemoteError(ReplicaError):
    """The daemon ran the command and it failed; carries the original error type and exit code."""

    def __init__(self, error_type: str, message: str, exit_code: int) -> None:
        self.error_type = error_type
        self.exit_code = exit_code
        super().__init__(message)


@dataclass(frozen=True)
class Endpoint:
    """How to reach a daemon: loopback port, bearer token and the daemon's pid."""

    host: str
    port: int
    token: str
    pid: int

    def write(self, path: Path) -> None:
        """Publish the endpoint readable by the owner only, atomically."""
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"host": self.host, "port": self.port, "token": self.token, "pid": self.pid}, handle)
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> Endpoint | None:
        """The endpoint a daemon published, or None if there is none (or it is unreadable)."""
        try:
            raw = json.loads(path.read_text())
            return cls(str(raw["host"]), int(raw["port"]), str(raw["token"]), int(raw["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def new_token() -> str:
    """A fresh random bearer token for the control channel."""
    return secrets.token_urlsafe(24)


class ControlServer:
    """Serves requests `{"token", "command", "params"}` with `{"ok", "result"|"error"}` replies."""

    def __init__(self, token: str, dispatch: Dispatch, error_reply: Callable[[BaseException], dict[str, Any]]) -> None:
        self._token = token
        self._dispatch = dispatch
        self._error_reply = error_reply
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on loopback; returns the port."""
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_LINE)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close connections."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._reply(writer, {"ok": False, "error": {"type": "ControlError",
                                               "message": "request too large", "exit_code": 4}})
                    return
                if not line:
                    return
                reply = await self._answer(line)
                await self._reply(writer, reply)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("request is not an object")
            token = request.get("token")
            command = request.get("command")
            params = request.get("params", {})
            if not isinstance(command, str) or not isinstance(params, dict) or not isinstance(token, str):
                raise ValueError("request needs a token, a command and params")
        except ValueError as exc:
            return {"ok": False, "error": {"type": "ControlError", "message": f"bad request: {exc}", "exit_code": 4}}
        if not hmac.compare_digest(token.encode(), self._token.encode()):
            return {"ok": False, "error": {"type": "ControlError", "message": "wrong control token", "exit_code": 6}}
        try:
            return {"ok": True, "result": await self._dispatch(command, params)}
        except BaseException as exc:
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                raise
            return {"ok": False, "error": self._error_reply(exc)}

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()


def call(endpoint: Endpoint, command: str, params: dict[str, Any], timeout: float = 60.0) -> Any:
    """Send one command to a daemon and return its result; RemoteError if it failed there."""
    request = json.dumps({"token": endpoint.token, "command": command, "params": params}).encode() + b"\n"
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as sock:
            sock.sendall(request)
            chunks = []
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                if chunk.endswith(b"\n"):
                    break
    except OSError as exc:
        raise ControlError(f"cannot reach the daemon at {endpoint.host}:{endpoint.port}: {exc}") from exc
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise ControlError(f"the daemon sent an unreadable reply: {exc}") from exc
    if reply.get("ok"):
        return reply.get("result")
    error = reply.get("error") or {}
    raise RemoteError(str(error.get("type", "Error")), str(error.get("message", "failed")), int(error.get("exit_code", 1)))
