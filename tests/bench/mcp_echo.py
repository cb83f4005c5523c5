"""The baseline MCP server for the MCP benchmark: the SDK's own server with one echo tool, over stdio."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer

server: MCPServer = MCPServer("echo", log_level="WARNING")


@server.tool()
def echo(text: str) -> dict[str, Any]:
    """Return the text given."""
    return {"text": text}


if __name__ == "__main__":
    server.run()
