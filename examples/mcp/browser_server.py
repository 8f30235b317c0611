"""An MCP server (SSE) named `browser` with oss-serve's own browser tool: search, open, find.

    EXA_API_KEY=... python examples/mcp/browser_server.py --host 127.0.0.1 --port 8002

The search provider is chosen as `oss-serve launch` chooses it (--browser-backend, else
BROWSER_BACKEND, else whichever of EXA_API_KEY / YDC_API_KEY is set). Pages and cursors are kept
per MCP connection, so `open` and `find` can refer to what an earlier `search` showed.
"""
from __future__ import annotations

import json
import sys
from collections import OrderedDict
from typing import Any

import openai_harmony
from mcp.server.mcpserver import Context, MCPServer
from mcp_example_common import as_mcp_result, example_parser, serve_sse, tool_args
from mcp_types import CallToolResult

from oss_serve.tools.browser_tool import BrowserSession, BrowserToolServer
from oss_serve.tools.factory import build_browser_tool

BROWSER_FLAGS = ("browser_backend", "browser_allow_private", "tool_timeout")
MAX_REMEMBERED_CONNECTIONS = 64


def build_server(browser_tool: BrowserToolServer) -> MCPServer:
    # harmony's browser namespace is what the built-in tool announces; reuse its words verbatim.
    harmony_browser = openai_harmony.ToolNamespaceConfig.browser()
    function_descriptions = {tool.name: tool.description for tool in harmony_browser.tools}
    server = MCPServer(name="browser", instructions=harmony_browser.description)
    # Keyed by the SSE session id, which names one client connection (ctx.session is a per-request
    # proxy in mcp 2.x). The SSE transport does not tell tools when a connection ends, so the oldest
    # connections' pages are dropped beyond a fixed number.
    sessions: OrderedDict[str, BrowserSession] = OrderedDict()

    async def call(ctx: Context, function: str, arguments: dict[str, Any]) -> CallToolResult:
        http_request = ctx.request_context.request
        connection_id = http_request.query_params.get("session_id", "") if http_request is not None else ""
        session = sessions.get(connection_id)
        if session is None:
            session = sessions[connection_id] = await browser_tool.open_session()
            while len(sessions) > MAX_REMEMBERED_CONNECTIONS:
                _, forgotten = sessions.popitem(last=False)
                await forgotten.close()
        sessions.move_to_end(connection_id)
        given = {name: value for name, value in arguments.items() if value is not None}
        return as_mcp_result(await session.call(f"browser.{function}", json.dumps(given)))

    @server.tool(name="search", description=function_descriptions["search"])
    async def search(query: str, ctx: Context, topn: int = 10, source: str | None = None) -> CallToolResult:
        return await call(ctx, "search", {"query": query, "topn": topn})

    @server.tool(name="open", description=function_descriptions["open"])
    async def open_page(ctx: Context, id: int | str = -1, cursor: int = -1, loc: int = -1, num_lines: int = -1,
                        view_source: bool = False, source: str | None = None) -> CallToolResult:
        return await call(ctx, "open", {"id": id, "cursor": cursor, "loc": loc, "num_lines": num_lines,
                                        "view_source": view_source})

    @server.tool(name="find", description=function_descriptions["find"])
    async def find(pattern: str, ctx: Context, cursor: int = -1) -> CallToolResult:
        return await call(ctx, "find", {"pattern": pattern, "cursor": cursor})

    return server


def main() -> int:
    options = example_parser(__doc__.splitlines()[0], BROWSER_FLAGS, default_port=8002).parse_args()
    try:
        browser_tool = build_browser_tool(tool_args(options))
    except ValueError as error:
        print(f"browser_server: {error}", file=sys.stderr)
        return 2
    if browser_tool is None:
        print("browser_server: the browser is disabled without a search provider: set EXA_API_KEY "
              "(or YDC_API_KEY) and start it again", file=sys.stderr)
        return 1
    serve_sse(build_server(browser_tool), options.host, options.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
