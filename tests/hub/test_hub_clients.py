"""Real processes on a hub: `agentstate hub` itself, serve peers and an MCP server joining rooms."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from replica.replica import Replica
from transport.rooms import LocalRoomStore

from tests.hub.hubkit import room_peer, running_hub, wait_for_line
from tests.mcp.helpers import call, mcp_session
from tests.transport.meshkit import eventually, free_port

AGENTSTATE = str(Path(sys.executable).parent / "agentstate")


def cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `agentstate --data DATA ARGS...` to completion."""
    return subprocess.run([AGENTSTATE, "--data", str(data), *args], capture_output=True, text=True, timeout=60)


def tasks_of(data: Path) -> set[str]:
    """Task ids `agentstate task list --json` reports for a directory."""
    done = cli(data, "task", "list", "--json")
    assert done.returncode == 0, done.stderr
    return {task["id"] for task in json.loads(done.stdout)["tasks"]}


def test_hub_process_serves_rooms_to_serve_peers_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    hub = subprocess.Popen([AGENTSTATE, "hub", "--data", str(tmp_path / "hub"), "--listen", f"127.0.0.1:{port}",
                            "--idle", "1"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    peers: list[subprocess.Popen[str]] = []
    try:
        said = wait_for_line(hub, "ready hub")
        assert any(f"ws://127.0.0.1:{port}/ROOM" in line for line in said), said
        for name in ("a", "b"):
            peers.append(subprocess.Popen(
                [AGENTSTATE, "--data", str(tmp_path / name), "serve", "--peer", f"ws://127.0.0.1:{port}/team",
                 "--room", "team"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True))
            wait_for_line(peers[-1], "ready")
        made = cli(tmp_path / "a", "task", "add", "through the hub", "--id", "T-through-hub")
        assert made.returncode == 0, made.stderr
        deadline = time.monotonic() + 30
        while "T-through-hub" not in tasks_of(tmp_path / "b"):
            assert time.monotonic() < deadline, "the task never reached b through the hub"
            time.sleep(0.1)
        second = subprocess.run([AGENTSTATE, "hub", "--data", str(tmp_path / "hub"), "--listen", "127.0.0.1:0"],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 5 and "held by another process" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
    finally:
        for proc in peers:
            proc.send_signal(signal.SIGTERM)
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(timeout=30) == 0
        for proc in peers:
            proc.wait(timeout=30)
    assert "T-through-hub" in tasks_of(tmp_path / "hub" / "rooms" / "team")


def test_hub_refuses_bad_options_clearly(tmp_path: Path) -> None:
    for args, message in ((["--listen", "nowhere"], "HOST:PORT"),
                          (["--room-token", "no-equals-sign"], "PATTERN=TOKEN"),
                          (["--listen", "0.0.0.0:0"], "without a token"),
                          (["--max-rooms", "0"], "max_rooms must be positive")):
        done = subprocess.run([AGENTSTATE, "hub", "--data", str(tmp_path / "hub"), *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode in (2, 4), (args, done.returncode, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr


async def test_an_mcp_server_joins_a_room_on_the_hub(tmp_path: Path) -> None:
    async with running_hub(LocalRoomStore(tmp_path / "hub")) as hub:
        replica = Replica.open(tmp_path / "r")
        try:
            async with room_peer(replica, hub.url("agents")):
                replica.tasks.create("for the MCP agent", id="T-for-mcp")
                async with mcp_session(tmp_path / "mcp", "--peer", hub.url("agents"), "--room", "agents") as session:
                    made = await call(session, "task_create", {"title": "from the MCP agent", "id": "T-from-mcp"})
                    assert made["id"] == "T-from-mcp"
                    await eventually(lambda: "T-from-mcp" in {t.id for t in replica.tasks.list()}, timeout=30,
                                     what="the MCP server's task reaches a replica in the room")
                    for _ in range(300):
                        result = await session.call_tool("task_get", {"id": "T-for-mcp"})
                        if not result.is_error:
                            break
                        await asyncio.sleep(0.05)
                    assert not result.is_error, "the room's task never reached the MCP server"
        finally:
            replica.close()
