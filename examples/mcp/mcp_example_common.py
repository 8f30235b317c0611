"""What the two example MCP servers share: flags, result conversion and the SSE listener."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable

from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, TextContent

from oss_serve.server_args import ToolArgs
from oss_serve.tools.base import ToolResult


def example_parser(description: str, tool_flags: Iterable[str], default_port: int) -> argparse.ArgumentParser:
    """--host/--port plus the same tool flags (and defaults) that `oss-serve launch` takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=default_port, help=f"port to listen on (default: {default_port})")
    ToolArgs.add_cli_args(parser, only=tool_flags)
    return parser


def tool_args(options: argparse.Namespace) -> ToolArgs:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return ToolArgs.from_cli_args(options)


def as_mcp_result(result: ToolResult) -> CallToolResult:
    # The text is passed through untouched so MCP clients see exactly what the model would; failures
    # keep their text too, flagged with isError rather than replaced by an exception message.
    return CallToolResult(content=[TextContent(type="text", text=result.text)], is_error=result.is_error)


def serve_sse(server: MCPServer, host: str, port: int) -> None:
    import uvicorn

    # sse_app(host=...) turns on DNS-rebinding protection when listening on loopback only.
    uvicorn.run(server.sse_app(host=host), host=host, port=port, log_level="warning")
