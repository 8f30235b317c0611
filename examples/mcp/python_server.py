"""An MCP server (SSE) named `python` that runs code with oss-serve's own python tool.

    python examples/mcp/python_server.py --host 127.0.0.1 --port 8001 [--python-backend sandbox]

The backend is chosen exactly as `oss-serve launch --tool-server demo` chooses it
(--python-backend, else PYTHON_EXECUTION_BACKEND, else docker when a daemon answers, else the
bubblewrap sandbox). Every call runs in a fresh interpreter (the stateless mode).
"""
from __future__ import annotations

import sys

from mcp.server.mcpserver import MCPServer
from mcp_example_common import as_mcp_result, example_parser, serve_sse, tool_args
from mcp_types import CallToolResult

from oss_serve.tools.factory import build_python_tool
from oss_serve.tools.python_tool import PythonToolServer

# Stateful mode is left out: an MCP connection outlives responses, so a notebook kept per connection
# would leak state between conversations.
PYTHON_FLAGS = ("python_backend", "tool_timeout", "python_docker_image")


def build_server(python_tool: PythonToolServer) -> MCPServer:
    description = python_tool.description()
    server = MCPServer(name="python", instructions=description)

    # The instructions already describe the tool at length; the tool itself needs one line.
    @server.tool(name="python", description="Runs Python code and returns its output, exactly as the model sees it.")
    async def run_python(code: str) -> CallToolResult:
        session = await python_tool.open_session()
        try:
            return as_mcp_result(await session.call("python", code))
        finally:
            await session.close()

    return server


def main() -> int:
    options = example_parser(__doc__.splitlines()[0], PYTHON_FLAGS, default_port=8001).parse_args()
    try:
        python_tool = build_python_tool(tool_args(options))
    except ValueError as error:
        print(f"python_server: {error}", file=sys.stderr)
        return 2
    if python_tool is None:
        print("python_server: no python backend is usable here (see the warning above)", file=sys.stderr)
        return 1
    serve_sse(build_server(python_tool), options.host, options.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
