"""The daemon's control channel: the wire format, its limits, and the client the CLI uses.

`agentstate serve` listens on a Unix socket in the data directory (mode 0600). A request
is one short header line, `AGENTSTATE/1 <token> <body-bytes>\\n`, then a JSON body
`{"command", "params"}` of exactly that many bytes; the reply is one JSON line
`{"ok", "result"|"error"}`. The daemon checks the caller's uid (SO_PEERCRED) before it
reads a byte and the token before it reads the body, so a stranger never gets it to
buffer more than the header. The token is in daemon.json, readable by the owner only.
This module imports neither asyncio nor the replica: the CLI's daemon path stays fast.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

from .errors import ReplicaError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ENDPOINT_FILE = "daemon.json"
SOCKET_FILE = "daemon.sock"
MAGIC = b"AGENTSTATE/1"
MAX_HEADER = 256
"""Bytes of header line read before the token is checked (the token and length fit in 100)."""
MAX_BODY = 64 * 1024 * 1024
"""Largest request body (an `import` carries the whole update, base64-encoded)."""
MAX_DEPTH = 64
"""Deepest JSON nesting accepted in a request body (no command needs more than a few levels)."""
MAX_REPLY = 1024 * 1024 * 1024
"""Largest reply the client reads (a whole-state `export` of a very large board)."""
_SUN_PATH_MAX = 100
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class ControlError(ReplicaError):
    """The daemon could not be reached, or its reply was unusable."""


class RemoteError(ReplicaError):
    """The daemon ran the command (or refused it) and it failed; carries the error type and exit code."""

    def __init__(self, error_type: str, message: str, exit_code: int) -> None:
        self.error_type = error_type
        self.exit_code = exit_code
        super().__init__(message)


class RequestError(Exception):
    """A request the daemon refuses before running it; `exit_code` is what the CLI exits with."""

    def __init__(self, message: str, exit_code: int = 4) -> None:
        self.exit_code = exit_code
        super().__init__(message)


class Endpoint:
    """How to reach a daemon: its Unix socket, bearer token and pid."""

    __slots__ = ("socket", "token", "pid")

    def __init__(self, socket: str, token: str, pid: int) -> None:
        self.socket = socket
        self.token = token
        self.pid = pid

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Endpoint) and (self.socket, self.token, self.pid) == (
            other.socket, other.token, other.pid)

    def __hash__(self) -> int:
        return hash((self.socket, self.token, self.pid))

    def write(self, path: Path) -> None:
        """Publish the endpoint readable by the owner only, atomically."""
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"socket": self.socket, "token": self.token, "pid": self.pid}, handle)
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> Endpoint | None:
        """The endpoint a daemon published, or None if there is none (or it is unreadable)."""
        try:
            raw = json.loads(path.read_text())
            return cls(str(raw["socket"]), str(raw["token"]), int(raw["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def socket_address(path: str) -> tuple[str, int | None]:
    """An address connect()/bind() accept for `path`, and a directory fd to close afterwards.

    Unix socket paths are limited to about 108 bytes; a longer one is reached through
    /proc/self/fd/N of its directory (Linux), which the kernel resolves like the real path.
    """
    if len(path.encode()) <= _SUN_PATH_MAX:
        return path, None
    directory, name = os.path.split(path)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{name}", fd


def encode_request(token: str, command: str, params: dict[str, Any]) -> bytes:
    """Header line plus JSON body, as the daemon expects them."""
    body = json.dumps({"command": command, "params": params}).encode()
    return MAGIC + b" " + token.encode() + b" " + str(len(body)).encode() + b"\n" + body


def parse_header(line: bytes) -> tuple[str, int]:
    """The token and body length of a header line; RequestError says what is wrong with it."""
    parts = line.rstrip(b"\r\n").split(b" ")
    if len(parts) != 3 or parts[0] != MAGIC:
        raise RequestError("bad request: expected the header 'AGENTSTATE/1 <token> <length>'")
    if not parts[2].isdigit() or len(parts[2]) > 12:
        raise RequestError("bad request: the body length is not a number")
    length = int(parts[2])
    if length > MAX_BODY:
        raise RequestError(f"request too large: {length} bytes (at most {MAX_BODY})")
    return parts[1].decode("ascii", "replace"), length


def check_depth(body: bytes, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON nested deeper than `limit` (json would raise RecursionError on 100,000 '[').

    Looks at brackets outside strings only; each pass of the bounded loop peels the innermost
    level, and unmatched openers left over count as levels the parser would enter.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return
    brackets = _STRING.sub(b"", body).translate(_BRACKETS, _NOT_BRACKETS)
    for level in range(limit + 1):
        if not brackets:
            return
        peeled = brackets.replace(b"[]", b"")
        if peeled == brackets:
            if level + brackets.count(b"[") <= limit:
                return
            break
        brackets = peeled
    raise RequestError(f"bad request: JSON nested deeper than {limit} levels")


def parse_body(body: bytes) -> tuple[str, dict[str, Any]]:
    """The command and params of a request body (depth checked first)."""
    check_depth(body)
    try:
        request = json.loads(body)
    except ValueError as exc:
        raise RequestError(f"bad request: the body is not JSON ({exc})") from None
    if not isinstance(request, dict):
        raise RequestError("bad request: the body is not a JSON object")
    command = request.get("command")
    params = request.get("params", {})
    if not isinstance(command, str) or not isinstance(params, dict):
        raise RequestError("bad request: the body needs a command (string) and params (object)")
    return command, params


def refusal(message: str, exit_code: int = 4, error_type: str = "ControlError") -> bytes:
    """One reply line saying why a request was refused."""
    error = {"type": error_type, "message": message, "exit_code": exit_code}
    return json.dumps({"ok": False, "error": error}).encode() + b"\n"


def _read_reply(sock: socket.socket) -> bytes:
    """Bytes up to the reply's newline (or EOF), at most MAX_REPLY."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_REPLY:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks)


def call(endpoint: Endpoint, command: str, params: dict[str, Any], timeout: float = 60.0) -> Any:
    """Send one command to a daemon and return its result; RemoteError if it failed or was refused there."""
    request = encode_request(endpoint.token, command, params)
    address, dir_fd = socket_address(endpoint.socket)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            try:
                sock.sendall(request)
            except BrokenPipeError:
                pass
            raw = _read_reply(sock)
    except OSError as exc:
        raise ControlError(f"cannot reach the daemon at {endpoint.socket}: {exc}") from exc
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    try:
        reply = json.loads(raw)
    except ValueError as exc:
        raise ControlError(f"the daemon sent an unreadable reply: {exc}") from exc
    if reply.get("ok"):
        return reply.get("result")
    error = reply.get("error") or {}
    raise RemoteError(str(error.get("type", "Error")), str(error.get("message", "failed")),
                      int(error.get("exit_code", 1)))
