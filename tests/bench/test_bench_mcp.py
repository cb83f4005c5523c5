"""MCP tool call round trip over stdio (issue 11): `task_create` and `task_list` of 1,000 tasks beside a bare
SDK echo tool, each server started the same way (a subprocess on stdio, the SDK's own client), interleaved
call by call in one run so that load hits both alike.

The goal is at most 2x the echo round trip. What the design promises, and what is asserted: a tool call
costs the SDK's round trip plus the replica operation (a write to the shared log for `task_create`), so a
create stays within 2x the echo. Listing 1,000 tasks is dominated by the replica reading and validating
them (printed: `replica.tasks.list()` in-process, no MCP) and by moving about 0.9 MB (the JSON text and the
structured copy) through the SDK; that goal is not met, and the figure is shown rather than asserted.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from replica import Replica

from .conftest import report, write_task_board

AGENTSTATE = str(Path(sys.executable).parent / "agentstate")
ECHO = str(Path(__file__).with_name("mcp_echo.py"))
TASKS = 1000
CREATES = 300
LISTS = 60
WARMUP = 10
CREATE_RATIO_GOAL = 2.0


def _list_in_process(data: Path) -> float:
    """p50 ms of `replica.tasks.list()` on the board in this process: what the replica costs without MCP."""
    with Replica.open(data) as replica:
        replica.tasks.list()
        times = []
        for _ in range(10):
            start = time.perf_counter()
            replica.tasks.list()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _timed(call: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    result = await call()
    elapsed = (time.perf_counter() - start) * 1000
    assert not result.is_error
    return elapsed


async def _interleaved(echo: ClientSession, ours: ClientSession, tool: str, arguments: Callable[[int], dict[str, Any]],
                       runs: int) -> tuple[list[float], list[float]]:
    """(echo, ours) round trips in ms, one of each per run, after WARMUP of each."""
    echo_times: list[float] = []
    our_times: list[float] = []
    for index in range(-WARMUP, runs):
        e = await _timed(lambda: echo.call_tool("echo", {"text": f"hello {index}"}))
        o = await _timed(lambda: ours.call_tool(tool, arguments(index)))
        if index >= 0:
            echo_times.append(e)
            our_times.append(o)
    return echo_times, our_times


def _show(label: str, echo_times: list[float], our_times: list[float]) -> float:
    p50, e50 = statistics.median(our_times), statistics.median(echo_times)
    report(f"MCP {label} round trip, p50", p50, e50, "ms", goal="<= 2x echo", higher_is_better=False,
           baseline_name="SDK echo")
    report(f"MCP {label} round trip, p99", _p(our_times, 0.99), _p(echo_times, 0.99), "ms", goal="<= 2x echo",
           higher_is_better=False, baseline_name="SDK echo")
    return p50 / e50


@pytest.mark.bench
def test_mcp_round_trip_beside_the_sdk_echo(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_task_board(data, TASKS)
    inside = _list_in_process(data)
    ratios: dict[str, float] = {}

    async def run() -> None:
        with anyio.fail_after(600):
            await measure()

    async def measure() -> None:
        echo_params = StdioServerParameters(command=sys.executable, args=[ECHO])
        our_params = StdioServerParameters(command=AGENTSTATE, args=["--data", str(data), "mcp"])
        async with stdio_client(echo_params) as (er, ew), stdio_client(our_params) as (orr, ow):
            async with ClientSession(er, ew) as echo, ClientSession(orr, ow) as ours:
                await echo.initialize()
                await ours.initialize()
                listed = await ours.call_tool("task_list", {})
                assert len(listed.structured_content["tasks"]) == TASKS
                e, o = await _interleaved(echo, ours, "task_list", lambda i: {}, LISTS)
                ratios["list"] = _show(f"task_list of {TASKS:,}", e, o)
                e, o = await _interleaved(echo, ours, "task_create", lambda i: {"title": f"bench {i}"}, CREATES)
                ratios["create"] = _show("task_create", e, o)

    anyio.run(run)
    print(f"\nreplica.tasks.list() of {TASKS:,} tasks in-process (no MCP), p50: {inside:.1f} ms: the floor under "
          "the MCP task_list figure")
    print(f"\nMCP p50 ratios to the SDK echo: task_create {ratios['create']:.2f}x, "
          f"task_list of {TASKS:,} {ratios['list']:.2f}x (goal <= {CREATE_RATIO_GOAL:g}x)")
    assert ratios["create"] <= CREATE_RATIO_GOAL, f"task_create p50 is {ratios['create']:.2f}x the SDK echo"
