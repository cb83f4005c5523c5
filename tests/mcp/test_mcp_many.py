"""Many `agentstate mcp` processes on one data directory (one per agent): no write is lost."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from replica import Replica

from .helpers import call, mcp_session

SERVERS = 20
CREATES = 20
TIMEOUT = 240


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT + 60)
async def test_twenty_servers_twenty_concurrent_creates_each_all_land(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Replica.open(data):
        pass
    created: list[str] = []
    all_ready = anyio.Event()
    ready = 0

    async def agent(number: int) -> None:
        nonlocal ready
        async with mcp_session(data, "--agent", f"agent-{number}") as session:
            ready += 1
            if ready == SERVERS:
                all_ready.set()
            await all_ready.wait()

            async def create(index: int) -> None:
                task = await call(session, "task_create", {"title": f"agent {number} task {index}"})
                created.append(task["id"])

            async with anyio.create_task_group() as group:
                for index in range(CREATES):
                    group.start_soon(create, index)

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as group:
            for number in range(SERVERS):
                group.start_soon(agent, number)
    assert len(created) == len(set(created)) == SERVERS * CREATES
    with Replica.open(data) as replica:
        tasks = replica.tasks.list()
        assert len(tasks) == SERVERS * CREATES
        assert {t.title for t in tasks} == {f"agent {n} task {i}" for n in range(SERVERS) for i in range(CREATES)}
        assert {t.id for t in tasks} == set(created)
