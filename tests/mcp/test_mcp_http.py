"""`agentstate mcp --http`: streamable HTTP with a bearer token, and the loopback rule."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from replica import Replica

from .helpers import AGENTSTATE, call

TOKEN = "s3cret-token"
READY_TIMEOUT = 60.0


def start_http(data: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start `agentstate mcp --http ...` and return it with the URL it prints once listening."""
    proc = subprocess.Popen([AGENTSTATE, "--data", str(data), "mcp", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + READY_TIMEOUT
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"(http://\S+/mcp)", line)
        if found:
            return proc, found.group(1)
    proc.kill()
    raise AssertionError(f"no URL printed: {''.join(lines)}")


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    data = tmp_path / "data"
    proc, url = start_http(data, "--http", "127.0.0.1:0", "--token", TOKEN)
    yield data, url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


async def test_streamable_http_with_a_bearer_token(http_server: tuple[Path, str]) -> None:
    data, url = http_server
    with anyio.fail_after(60):
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            async with streamable_http_client(url, http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    made = await call(session, "task_create", {"title": "over http"})
                    listed = await call(session, "task_list", {})
                    assert [t["id"] for t in listed["tasks"]] == [made["id"]]
                    missing = await session.call_tool("task_get", {"id": "T-none"})
                    assert missing.is_error
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        headers = {"Accept": "application/json, text/event-stream"}
        async with httpx2.AsyncClient() as plain:
            assert (await plain.post(url, json=body, headers=headers)).status_code == 401
            wrong = await plain.post(url, json=body, headers={**headers, "Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and "Bearer" in wrong.headers["www-authenticate"]
    with Replica.open(data) as replica:
        assert [t.title for t in replica.tasks.list()] == ["over http"]


def test_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    done = subprocess.run([AGENTSTATE, "--data", str(tmp_path / "data"), "mcp", "--http", "0.0.0.0:0"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "needs --token" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
