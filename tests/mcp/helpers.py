"""Helpers for the MCP tests: the SDK's own client talking to `agentstate mcp` in a subprocess."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.types import CallToolResult

AGENTSTATE = str(Path(sys.executable).parent / "agentstate")


def server_params(data: Path, *args: str, env: dict[str, str] | None = None) -> StdioServerParameters:
    """`agentstate --data DATA mcp ARGS...` as the SDK's stdio client starts it."""
    return StdioServerParameters(command=AGENTSTATE, args=["--data", str(data), "mcp", *args], env=env)


@asynccontextmanager
async def mcp_session(data: Path, *args: str, env: dict[str, str] | None = None) -> AsyncIterator[ClientSession]:
    """An initialised client session with a fresh `agentstate mcp` on `data`."""
    async with stdio_client(server_params(data, *args, env=env)) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


def text(result: CallToolResult) -> str:
    """The text of a tool result's first content block."""
    return result.content[0].text if result.content else ""  # type: ignore[union-attr]


async def call(session: ClientSession, tool: str, arguments: dict[str, Any] | None = None) -> Any:
    """Call a tool that must succeed; its structured result."""
    result = await session.call_tool(tool, arguments or {})
    assert not result.is_error, f"{tool} failed: {text(result)}"
    return result.structured_content


async def fails(session: ClientSession, tool: str, arguments: dict[str, Any]) -> str:
    """Call a tool that must fail with a tool error (not a protocol error); its message."""
    result = await session.call_tool(tool, arguments)
    assert result.is_error, f"{tool} succeeded: {result.structured_content}"
    return text(result)
