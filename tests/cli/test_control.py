"""The daemon's control socket under a local stranger: every bad request gets a clear refusal, memory stays put.

A real `agentstate serve` is attacked over its real Unix socket: without the token, with
oversized, slow and deeply nested requests, with too many connections, and (as root) from
another uid. The daemon's RSS is read from /proc before and after.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replica.app.control import MAX_BODY, MAX_DEPTH, MAX_HEADER, Endpoint, check_depth, encode_request, socket_address
from replica.app.control import RequestError
from replica.app.daemon import HEADER_TIMEOUT, MAX_CONNECTIONS

from .conftest import Agentstate

FLOOD = 64 * 1024 * 1024
MEMORY_SLACK = 50 * 1024 * 1024


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def endpoint(agentstate: Agentstate) -> Endpoint:
    found = Endpoint.read(agentstate.data / "daemon.json")
    assert found is not None
    return found


def connect(path: str, timeout: float = 30.0) -> socket.socket:
    """A connected client socket (long paths go through /proc/self/fd, as the CLI does)."""
    address, dir_fd = socket_address(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    return sock


def reply_of(sock: socket.socket) -> dict[str, Any]:
    """Read one reply line (bounded) and decode it."""
    data = b""
    for _ in range(10_000):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if data.endswith(b"\n"):
            break
    sock.close()
    assert data, "the daemon closed without a reply"
    return json.loads(data)


def send_and_read(path: str, payload: bytes, total: int | None = None) -> dict[str, Any]:
    """Send `payload` (repeated up to `total` bytes) until the daemon stops reading, then read its reply."""
    sock = connect(path)
    sent = 0
    goal = total if total is not None else len(payload)
    try:
        while sent < goal:
            piece = payload[: goal - sent]
            sock.sendall(piece)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return reply_of(sock)


def refused(reply: dict[str, Any], *words: str) -> str:
    assert reply["ok"] is False, reply
    message = str(reply["error"]["message"])
    assert all(word in message for word in words), message
    return message


@pytest.fixture
def served(agentstate: Agentstate, daemon: subprocess.Popen[bytes]) -> Iterator[tuple[Endpoint, int]]:
    """The daemon's endpoint and pid, with one command already served (so its RSS is warm)."""
    assert agentstate("task", "add", "warm up").code == 0
    yield endpoint(agentstate), daemon.pid


def test_socket_and_endpoint_file_are_owner_only(agentstate: Agentstate, served: tuple[Endpoint, int]) -> None:
    ep, _ = served
    assert stat.S_ISSOCK(os.stat(ep.socket).st_mode)
    assert stat.S_IMODE(os.stat(ep.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(agentstate.data / "daemon.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(agentstate.data / "daemon.lock").st_mode) == 0o600


def test_strangers_requests_are_refused_clearly_and_memory_stays_put(served: tuple[Endpoint, int]) -> None:
    ep, pid = served
    before = rss(pid)
    refused(send_and_read(ep.socket, encode_request("not-the-token", "status", {})), "wrong control token")
    refused(send_and_read(ep.socket, b"GET / HTTP/1.1\r\n\r\n"), "bad request")
    refused(send_and_read(ep.socket, b"[" * 100_000 + b"\n"), "header line longer")
    nested = b"[" * 100_000
    header = b"AGENTSTATE/1 " + ep.token.encode() + b" " + str(len(nested)).encode() + b"\n"
    refused(send_and_read(ep.socket, header + nested), f"nested deeper than {MAX_DEPTH}")
    huge = f"AGENTSTATE/1 {ep.token} {MAX_BODY + 1}\n".encode()
    refused(send_and_read(ep.socket, huge + b"x" * 1024 * 1024, total=len(huge) + 8 * 1024 * 1024),
            "request too large")

    replies: list[dict[str, Any]] = []
    lock = threading.Lock()

    def flood() -> None:
        reply = send_and_read(ep.socket, b"x" * (1024 * 1024), total=FLOOD)
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=flood) for _ in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(replies) == 24
    for reply in replies:
        message = refused(reply)
        assert "header line longer" in message or "too many control connections" in message, message
    after = rss(pid)
    assert after - before < MEMORY_SLACK, f"daemon RSS grew from {before >> 20} MiB to {after >> 20} MiB"
    assert Endpoint.read(Path(ep.socket).parent / "daemon.json") == ep


def test_a_slow_client_is_timed_out_and_the_cap_refuses_extra_connections(
        agentstate: Agentstate, served: tuple[Endpoint, int]) -> None:
    ep, pid = served
    before = rss(pid)
    idle = [connect(ep.socket, timeout=HEADER_TIMEOUT + 30) for _ in range(MAX_CONNECTIONS)]
    idle[0].sendall(b"AGENTSTATE/1 ")
    extra = connect(ep.socket)
    refused(reply_of(extra), "too many control connections")
    for sock in idle:
        refused(reply_of(sock), "timed out", "header")
    assert agentstate("task", "list", "--json").code == 0, "the daemon serves again once they are gone"
    assert rss(pid) - before < MEMORY_SLACK


def test_an_authenticated_request_with_a_valid_body_is_served(served: tuple[Endpoint, int]) -> None:
    ep, _ = served
    reply = send_and_read(ep.socket, encode_request(ep.token, "counter.incr", {"name": "c", "by": 2}))
    assert reply == {"ok": True, "result": {"name": "c", "value": 2}}


def as_uid(uid: int, path: str, request: bytes) -> bytes:
    """Connect to `path` from a forked child running as `uid`, send `request`, return what it read."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        status = 1
        try:
            os.close(read_end)
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(30)
                sock.connect(path)
                sock.sendall(request)
                os.write(write_end, sock.recv(65536))
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    assert os.waitpid(child, 0)[1] == 0, "the stranger could not connect"
    return data


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")
def test_another_uid_is_refused_before_it_is_read(agentstate: Agentstate) -> None:
    """Even with the socket opened up (0666, directories searchable), the daemon checks SO_PEERCRED."""
    base = Path(tempfile.mkdtemp(prefix="agentstate-uid-", dir="/tmp"))
    try:
        data = base / "data"
        other = Agentstate(data, base)
        proc = other.serve()
        try:
            ep = endpoint(other)
            for path in (base, data):
                path.chmod(0o711)
            Path(ep.socket).chmod(0o666)
            request = f"AGENTSTATE/1 {ep.token} 2\n{{}}".encode()
            refused(json.loads(as_uid(65534, ep.socket, request)), "uid 65534 may not use this daemon")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


def test_depth_check_counts_only_brackets_outside_strings() -> None:
    check_depth(json.dumps({"text": "[" * 10_000}).encode())
    check_depth(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    with pytest.raises(RequestError, match="nested deeper"):
        check_depth(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    with pytest.raises(RequestError, match="nested deeper"):
        check_depth(b'{"a":' * 100_000)
    assert MAX_HEADER < 1024
