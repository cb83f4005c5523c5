"""Logging never blocks serving: a daemon whose stderr pipe nobody reads keeps syncing; JSON lines."""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import logging
import os
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from replica.app.logsetup import JsonFormatter, configure, message_fields
from replica.replica import Replica

from tests.transport.meshkit import eventually, free_port, mesh, node_url, raw_client, running

AGENTSTATE = str(Path(sys.executable).parent / "agentstate")
F_SETPIPE_SZ = 1031
PIPE_BYTES = 4096


def pipe_fill(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD on its read end)."""
    raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int.from_bytes(raw, sys.byteorder)


def read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    """Read a pipe until `marker` appears; fail after `timeout` seconds."""
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} within {timeout}s: {seen[-2000:]!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"the pipe closed before {marker!r}: {seen[-2000:]!r}"
            seen += chunk
    return seen


def read_to_end(fd: int, timeout: float) -> bytes:
    """Everything left in a pipe until its writer closes it (bounded by `timeout`)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


async def test_a_daemon_whose_stderr_is_not_read_keeps_serving(tmp_path: Path) -> None:
    port = free_port()
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, PIPE_BYTES)
    daemon = subprocess.Popen(
        [AGENTSTATE, "--data", str(tmp_path / "server"), "serve", "--listen", f"127.0.0.1:{port}",
         "--log-format", "json", "--log-level", "info"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=write_end)
    os.close(write_end)
    writer = Replica.open(tmp_path / "writer")
    reader = Replica.open(tmp_path / "reader")
    try:
        read_until(read_end, b"ready ", 60)
        for _ in range(300):
            client = await raw_client(node_url(port))
            await client.close()
            if pipe_fill(read_end) >= PIPE_BYTES - 256:
                break
        await eventually(lambda: pipe_fill(read_end) >= PIPE_BYTES - 256, what="the stderr pipe to fill")
        for _ in range(100):
            client = await raw_client(node_url(port))
            await client.close()
        for index in range(20):
            writer.tasks.create(f"written while stderr is full {index}", id=f"T-{index}")
        async with running(mesh(writer, listen=None, peers=[node_url(port)])):
            await eventually(lambda: all(f"T-{i}" in writer.tasks for i in range(20)), what="the writes")
            async with running(mesh(reader, listen=None, peers=[node_url(port)])):
                await eventually(lambda: all(f"T-{i}" in reader.tasks for i in range(20)), timeout=30,
                                 what="the writes to reach another peer through the daemon")
        listed = await asyncio.to_thread(
            subprocess.run, [AGENTSTATE, "--data", str(tmp_path / "server"), "task", "list", "--json"],
            capture_output=True, timeout=60)
        assert listed.returncode == 0, listed.stderr.decode()
        assert len(json.loads(listed.stdout)["tasks"]) == 20
        assert pipe_fill(read_end) >= PIPE_BYTES - 256, "the test meant stderr to stay full throughout"
        daemon.send_signal(signal.SIGTERM)
        rest = await asyncio.to_thread(read_to_end, read_end, 30)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=10)
        os.close(read_end)
        writer.close()
        reader.close()
    lines = [json.loads(line) for line in rest.decode().splitlines() if line.startswith("{")]
    connected = [line for line in lines if line.get("event") == "connected"]
    assert connected and {"ts", "level", "logger", "msg", "peer"} <= set(connected[0])
    assert connected[0]["logger"] == "transport.mesh" and connected[0]["level"] == "info"


def test_json_lines_carry_the_fields() -> None:
    record = logging.LogRecord("transport.mesh", logging.WARNING, __file__, 1,
                               'event=rejected reason=%s peer=%s code=%d detail=%s',
                               ("protocol_error", "127.0.0.1:5", 4400, json.dumps('bad "frame"')), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "warning" and line["logger"] == "transport.mesh"
    assert line["event"] == "rejected" and line["code"] == "4400" and line["detail"] == 'bad "frame"'
    assert line["ts"].endswith("Z") and line["msg"].startswith("event=rejected")
    assert message_fields("level=x msg=y plain text") == {"field_level": "x", "field_msg": "y"}


class BlockedStream(io.StringIO):
    """A stream whose writes wait until released (stderr going to a pipe nobody reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait(30)
        return super().write(text)


def test_a_full_queue_drops_and_counts_instead_of_waiting() -> None:
    stream = BlockedStream()
    setup = configure("info", "text", stream=stream, queue_records=50)
    logger = logging.getLogger("tests.ops.flood")
    try:
        started = time.monotonic()
        for index in range(5000):
            logger.info("event=flood index=%d", index)
        assert time.monotonic() - started < 5, "logging waited for the stream"
        assert setup.handler.dropped >= 5000 - 52
        stream.release.set()
        deadline = time.monotonic() + 10
        while not setup.handler.queue.empty():
            assert time.monotonic() < deadline, "the writer did not drain the queue"
            time.sleep(0.01)
        logger.warning("event=after")
        while "event=after" not in stream.getvalue():
            assert time.monotonic() < deadline, stream.getvalue()[-500:]
            time.sleep(0.01)
    finally:
        stream.release.set()
        setup.stop()
        logging.getLogger().handlers.clear()
    reported = [int(line.split("count=")[1].split()[0]) for line in stream.getvalue().splitlines()
                if "event=log_dropped" in line]
    assert sum(reported) == setup.handler.dropped, "every dropped record is reported"


def test_bad_log_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        configure("loud", "text")
    with pytest.raises(ValueError):
        configure("info", "xml")
