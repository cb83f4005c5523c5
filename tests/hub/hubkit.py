"""Helpers for the hub tests: run a hub on loopback, dial rooms with agentstate meshes or Node Yjs clients."""

from __future__ import annotations

import asyncio
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from replica.replica import Replica
from transport.hub import Hub, HubAuth, HubLimits
from transport.limits import ReconnectPolicy
from transport.mesh import Mesh
from transport.rooms import RoomStore

TESTS_DIR = Path(__file__).resolve().parent.parent
YJS_PEER = Path(__file__).resolve().parent / "yjs_peer.mjs"
NODE = shutil.which("node")
HAS_NODE = NODE is not None and (TESTS_DIR / "node_modules" / "y-websocket").is_dir()
FAST_RECONNECT = ReconnectPolicy(initial=0.05, factor=2.0, maximum=0.4, jitter=0.5)


@asynccontextmanager
async def running_hub(store: RoomStore, *, auth: HubAuth | None = None, limits: HubLimits | None = None,
                      **options: Any) -> AsyncIterator[Hub]:
    """A started hub on a free loopback port, stopped afterwards."""
    hub = Hub(store, listen=("127.0.0.1", 0), auth=auth, limits=limits, ping_interval=None, close_timeout=1.0,
              **options)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()


@asynccontextmanager
async def room_peer(replica: Replica, url: str, *, token: str | None = None) -> AsyncIterator[Mesh]:
    """An agentstate replica dialing one room of a hub (as `serve --peer URL` does)."""
    room = unquote(urlsplit(url).path[1:])
    mesh = Mesh(replica, room=room, peers=[url], peer_token=token, reconnect=FAST_RECONNECT,
                ping_interval=None, close_timeout=1.0, follow=False)
    await mesh.start()
    try:
        yield mesh
    finally:
        await mesh.stop()


class YjsPeer:
    """`node yjs_peer.mjs`: writes probe[write] once synced and waits for probe[wait]."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def start(cls, base_url: str, room: str, write: str, wait: str, token: str = "") -> YjsPeer:
        """Run the script from tests/ so that node_modules resolve."""
        assert NODE is not None
        proc = await asyncio.create_subprocess_exec(
            NODE, str(YJS_PEER), base_url, room, token, write, wait, cwd=TESTS_DIR,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        return cls(proc)

    async def expect(self, tag: str, timeout: float = 30.0) -> str:
        """Read lines until one starts with `tag`; return its rest (fail if the script ends first)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    assert self.proc.stderr is not None
                    err = (await self.proc.stderr.read()).decode(errors="replace")
                    raise AssertionError(f"node ended before {tag}; saw {self.lines}; stderr: {err}")
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                if line == tag or line.startswith(tag + " "):
                    return line[len(tag):].strip()

    def kill(self) -> None:
        """Stop the script if it still runs."""
        if self.proc.returncode is None:
            self.proc.kill()


def wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 60.0) -> list[str]:
    """Read the process's stderr (from a thread: no select on a buffered pipe) until a line starts with `prefix`."""
    assert proc.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    end = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.01, end - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"no line starting with {prefix!r}; saw {seen}")
