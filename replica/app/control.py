"""The daemon's control channel: the wire format, its limits, and the client the CLI uses.

`agentstate serve` listens on a Unix socket in the data directory (mode 0600). A request
is one short header line, `AGENTSTATE/1 <token> <body-bytes>\\n`, then a JSON body
`{"command", "params", "key"?}` of exactly that many bytes (`key`: the write's idempotency
key); the reply is one JSON line `{"ok", "result"|"error"}`, and an error with
`"refused": true` means the request was turned away before it ran. The daemon checks the
caller's uid (SO_PEERCRED) before it reads a byte and the token before it reads the body,
so a stranger never gets it to buffer more than the header. The token is in daemon.json,
readable by the owner only. The client says whether a failed call certainly did not run
(`NotDelivered`) or may have (`ReplyLost`), so the CLI never blindly runs a write twice.
This module imports neither asyncio nor the replica, and the client uses the C `_socket` module
that `socket` wraps (whose import, with `selectors`, cost a CLI call about 4 ms): the CLI's
daemon path stays fast.
"""

from __future__ import annotations

import _socket
import json
import os
import re
from pathlib import Path

from replica.errors import ReplicaError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ENDPOINT_FILE = "daemon.json"
SOCKET_FILE = "daemon.sock"
DAEMON_LOCK_FILE = "daemon.lock"
"""Held (flock, exclusive) by the serving daemon for its life: one daemon per directory, and
only a holder may publish or remove daemon.json, so a stale file is never removed over a new one."""
MAGIC = b"AGENTSTATE/1"
MAX_HEADER = 256
"""Bytes of header line read before the token is checked (the token and length fit in 100)."""
MAX_BODY = 64 * 1024 * 1024
"""Largest request body (an `import` carries the whole update, base64-encoded)."""
MAX_DEPTH = 64
"""Deepest JSON nesting accepted in a request body (no command needs more than a few levels)."""
MAX_REPLY = 1024 * 1024 * 1024
"""Largest reply the client reads (a whole-state `export` of a very large board)."""
CONNECT_TIMEOUT = 5.0
"""Seconds a client waits to connect (a live daemon accepts at once; a stopped one is given up on)."""
_SUN_PATH_MAX = 100
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class ControlError(ReplicaError):
    """The daemon could not be reached, or its reply was unusable."""


class NotDelivered(ControlError):
    """The daemon certainly did not run the request: no connection, not all of it sent, or refused unread."""


class ReplyLost(ControlError):
    """The whole request was sent but no complete reply came back: the daemon may have run it."""


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


def claim_daemon_lock(home: Path, patience: float = 0.0) -> int | None:
    """A descriptor holding `home`'s daemon lock, or None if another process keeps it for `patience` seconds.

    A daemon holds it for its life; a CLI removing a stale daemon.json holds it for an instant.
    The kernel releases it when the holder dies, so a killed daemon never blocks the next."""
    import fcntl
    import time

    fd = os.open(home / DAEMON_LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + patience
    for _ in range(int(patience / 0.01) + 1):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.01)
    os.close(fd)
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


def encode_body(command: str, params: dict[str, Any], key: str | None = None) -> bytes:
    """The JSON body of a request; `key` is the write's idempotency key (None for reads)."""
    request: dict[str, Any] = {"command": command, "params": params}
    if key is not None:
        request["key"] = key
    return json.dumps(request).encode()


def encode_request(token: str, command: str, params: dict[str, Any], key: str | None = None) -> bytes:
    """Header line plus JSON body, as the daemon expects them."""
    return frame(token, encode_body(command, params, key))


def frame(token: str, body: bytes) -> bytes:
    """A body behind its header line."""
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


def parse_body(body: bytes) -> tuple[str, dict[str, Any], str | None]:
    """The command, params and idempotency key (or None) of a request body (depth checked first)."""
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
    key = request.get("key")
    if key is not None and not isinstance(key, str):
        raise RequestError("bad request: the key must be a string")
    return command, params, key


def refusal(message: str, exit_code: int = 4, error_type: str = "ControlError") -> bytes:
    """One reply line saying why a request was refused before it ran (`refused`: the client may run it elsewhere)."""
    error = {"type": error_type, "message": message, "exit_code": exit_code, "refused": True}
    return json.dumps({"ok": False, "error": error}).encode() + b"\n"


def _read_reply(sock: _socket.socket) -> bytes:
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


def call(endpoint: Endpoint, command: str, params: dict[str, Any], *, key: str | None = None,
         timeout: float = 60.0) -> Any:
    """Send one command to a daemon and return its result; RemoteError if it ran there and failed.

    NotDelivered when it certainly did not run (too large to send, no connection, sent in
    part, refused unread); ReplyLost when it was sent whole and no complete reply came
    (the daemon died or hung): it may have run, so only a retry with the same `key` is safe.
    """
    body = encode_body(command, params, key)
    if len(body) > MAX_BODY:
        raise NotDelivered(f"request too large for the control channel: {len(body)} bytes (at most {MAX_BODY})")
    request = frame(endpoint.token, body)
    del body
    address, dir_fd = socket_address(endpoint.socket)
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(min(timeout, CONNECT_TIMEOUT))
            try:
                sock.connect(address)
            except OSError as exc:
                raise NotDelivered(f"cannot reach the daemon at {endpoint.socket}: {exc}") from exc
            sock.settimeout(timeout)
            whole = True
            try:
                sock.sendall(request)
            except OSError:
                whole = False
            try:
                raw = _read_reply(sock)
            except OSError as exc:
                raw = b""
                if whole:
                    raise ReplyLost(f"no reply from the daemon at {endpoint.socket}: {exc}") from exc
        finally:
            sock.close()
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    try:
        reply = json.loads(raw) if raw.endswith(b"\n") else None
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        if whole:
            raise ReplyLost(f"the daemon at {endpoint.socket} closed the connection without a complete reply")
        raise NotDelivered(f"the daemon at {endpoint.socket} stopped reading the request")
    if reply.get("ok"):
        return reply.get("result")
    error = reply.get("error") or {}
    if error.get("refused") is True:
        raise NotDelivered(f"the daemon refused the request: {error.get('message', '')}")
    raise RemoteError(str(error.get("type", "Error")), str(error.get("message", "failed")),
                      int(error.get("exit_code", 1)))
