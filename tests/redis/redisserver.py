"""A real redis-server for tests: its own loopback port and directory, append-only persistence on.

Importable by any test (the hub's tests reuse it): `RedisServer(directory).start()`, `.url`,
`.restart()`, `.stop()`; `kill()` ends it with SIGKILL, as a crash would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.transport.meshkit import free_port

START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0


def _ping(port: int) -> bool:
    """True when a Redis on `port` answers PING with PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on 127.0.0.1 with its data in `directory` (kept across restarts)."""

    def __init__(self, directory: Path, *, port: int | None = None, appendfsync: str = "always") -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server; .ci/run does)")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis:// URL of database 0 on this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and return once it answers PING (bounded by START_TIMEOUT)."""
        if self.process is not None:
            raise RuntimeError("redis-server already running")
        log = open(self.directory / "redis.log", "ab")
        try:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                 "--save", "", "--appendonly", "yes", "--appendfsync", self.appendfsync,
                 "--daemonize", "no", "--protected-mode", "yes"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self._log_tail()}")
            if _ping(self.port):
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT} s: {self._log_tail()}")

    def stop(self) -> None:
        """SIGTERM (Redis flushes its append-only file and exits), SIGKILL after STOP_TIMEOUT."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: what a crash or a power cut leaves (appendfsync always keeps every acknowledged write)."""
        self._end(signal.SIGKILL)

    def restart(self, *, hard: bool = False) -> None:
        """Stop (or kill, with `hard`) and start again on the same port and directory."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()

    def _end(self, sig: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, sig)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)

    def _log_tail(self) -> str:
        try:
            return (self.directory / "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"
