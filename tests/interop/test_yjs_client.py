"""Interop with a real Yjs client: y-websocket's WebsocketProvider (Node, pinned npm packages) on our mesh."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Map

from replica import Replica
from transport import closecodes
from transport.mesh import Mesh

from tests.interop.ywskit import wait_for
from tests.transport.meshkit import snapshot

pytestmark = pytest.mark.interop

TESTS_DIR = Path(__file__).resolve().parent.parent
SCRIPT = TESTS_DIR / "interop" / "yjs_client.mjs"
NODE = shutil.which("node")
ROOM = "interop-room"
TOKEN = "yjs-interop-token"

if NODE is None or not (TESTS_DIR / "node_modules" / "y-websocket").is_dir():
    pytest.skip("needs Node.js and `npm ci` in tests/ (make test installs both)", allow_module_level=True)


class NodeClient:
    """The Node script as a subprocess whose stdout lines are read as tagged events."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def start(cls, url: str, token: str, ack_id: str) -> NodeClient:
        """Run `node yjs_client.mjs URL ROOM TOKEN ACK_ID` from tests/ (so node_modules resolve)."""
        assert NODE is not None
        proc = await asyncio.create_subprocess_exec(
            NODE, str(SCRIPT), url, ROOM, token, ack_id, cwd=TESTS_DIR,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def expect(self, tag: str, timeout: float = 20.0) -> str:
        """Read lines until one starts with `tag`; return the rest of it (fail on exit or timeout)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"node exited before {tag}; saw {self.lines}; stderr: {await self.stderr()}")
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                if line.startswith(tag + " ") or line == tag:
                    return line[len(tag):].strip()

    async def exit_code(self, timeout: float = 20.0) -> int:
        """Wait for the process to end."""
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stderr(self) -> str:
        """What the script wrote on stderr (after it ended)."""
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode(errors="replace")

    def kill(self) -> None:
        """Stop the process if it still runs."""
        if self.proc.returncode is None:
            self.proc.kill()


def loopback_url(node: Mesh) -> str:
    """The ws:// base URL of a mesh (y-websocket appends the room itself)."""
    assert node.address is not None
    return f"ws://127.0.0.1:{node.address[1]}"


async def test_yjs_client_reads_python_writes_and_python_reads_its_writes() -> None:
    replica = Replica.memory("py-interop")
    replica.tasks.create("Written in Python", id="T-py-1", priority="high", tags=["py"])
    node = Mesh(replica, room=ROOM, listen=("127.0.0.1", 0), tokens=[TOKEN])
    async with node:
        client = await NodeClient.start(loopback_url(node), TOKEN, "T-py-ack")
        try:
            synced: dict[str, Any] = json.loads(await client.expect("SYNCED"))
            assert synced["tasks"]["T-py-1"]["title"] == "Written in Python"
            assert synced["tasks"]["T-py-1"]["tags"] == {"py": True}
            assert synced["tasks"]["T-py-1"]["created_by"] == "py-interop"
            js_client_id = int(await client.expect("WROTE"))

            await wait_for(lambda: replica.tasks.find("T-js-1") is not None, what="T-js-1 in Python")
            task = replica.tasks.get("T-js-1")  # the typed API validates every field against docs/schema.md
            assert task.title == "Written from JavaScript: ünïcödé ✓"
            assert (task.status.value, task.priority.value, task.owner) == ("in_progress", "high", "js-agent")
            assert task.tags == ("interop",) and task.properties == {"attempts": 2}
            assert task.created_by == "js-client"
            assert replica.invalid_records() == []
            assert replica.counters.value("builds") == 4  # p=5, n=1 in the JS client's own slot
            counters = snapshot(replica).get("counters", type=Map).to_py()
            assert counters == {f"builds|{js_client_id}": {"p": 5, "n": 1}}  # its own slot, as docs/schema.md says

            replica.tasks.create("Python saw the JS task", id="T-py-ack")
            acked = json.loads(await client.expect("ACKED"))
            assert acked["title"] == "Python saw the JS task"
            assert await client.exit_code() == 0
        finally:
            client.kill()
        assert node.status()["rejections"] == {}


async def test_wrong_token_stops_the_yjs_client_for_good() -> None:
    replica = Replica.memory("py-interop-auth")
    before = replica.diff()
    node = Mesh(replica, room=ROOM, listen=("127.0.0.1", 0), tokens=[TOKEN])
    async with node:
        client = await NodeClient.start(loopback_url(node), "not-the-token", "T-never")
        try:
            assert await client.expect("CLOSED") == str(closecodes.UNAUTHORIZED)
            stopped = json.loads(await client.expect("STOPPED"))
            assert await client.exit_code() == 4
        finally:
            client.kill()
        # The client lingered 1.5 s after the refusal (y-websocket retries after 0.2, 0.4, 0.8 s)
        # and never opened another connection; the server refused exactly one.
        assert stopped == {"code": closecodes.UNAUTHORIZED, "closes": 1, "opens": 1, "shouldConnect": False}
        assert client.lines.count(f"CLOSED {closecodes.UNAUTHORIZED}") == 1
        assert not any(line.startswith(("SYNCED", "WROTE")) for line in client.lines)
        assert node.status()["rejections"] == {"unauthorized": 1}
        assert replica.diff() == before
