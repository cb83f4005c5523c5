"""A second baseline for the MCP benchmark: the SDK's own server answering with a fixed large result.

`python mcp_echo_payload.py FILE` serves one tool, `payload`, that returns FILE's JSON text as the
text block and its decoding as the structured copy, the shape `agentstate mcp`'s `task_list`
answers in. Both are built once, so a call costs only what the SDK spends moving that answer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, TextContent

TEXT = Path(sys.argv[1]).read_text()
ANSWER = CallToolResult(content=[TextContent(type="text", text=TEXT)], structured_content=json.loads(TEXT))

server: MCPServer = MCPServer("echo-payload", log_level="WARNING")


@server.tool()
def payload() -> dict[str, Any]:
    """Return the fixed answer."""
    return ANSWER  # type: ignore[return-value]


if __name__ == "__main__":
    server.run()
