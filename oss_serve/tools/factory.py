"""`--tool-server demo|host:port,...|http://.../sse` -> the ToolServer the API layer uses."""
from __future__ import annotations

import logging
import math

from oss_serve.server_args import ToolArgs
from oss_serve.tools.base import ToolServer
from oss_serve.tools.browser_backends import choose_search_backend
from oss_serve.tools.browser_tool import BrowserToolServer
from oss_serve.tools.mcp_client import McpToolServer
from oss_serve.tools.python_backends import ResourceLimits, choose_python_backend
from oss_serve.tools.python_tool import PythonToolServer
from oss_serve.tools.tool_group import ToolServerGroup

logger = logging.getLogger(__name__)


def build_python_tool(args: ToolArgs) -> PythonToolServer | None:
    # The CPU-time rlimit is a backstop behind the wall-clock timeout; a notebook lives across calls.
    cpu_seconds = math.ceil(args.tool_timeout) + 10
    if args.python_stateful:
        cpu_seconds *= 10
    backend = choose_python_backend(args.python_backend, ResourceLimits(cpu_seconds=cpu_seconds),
                                    docker_image=args.python_docker_image)
    if backend is None:
        return None
    logger.info("python tool: %s backend, %s, timeout %g s", backend.name,
                "stateful" if args.python_stateful else "stateless", args.tool_timeout)
    return PythonToolServer(backend, timeout_s=args.tool_timeout, stateful=args.python_stateful)


def build_browser_tool(args: ToolArgs) -> BrowserToolServer | None:
    search_backend = choose_search_backend(args.browser_backend)
    if search_backend is None:
        return None
    return BrowserToolServer(search_backend, allow_private=args.browser_allow_private,
                             timeout_s=min(args.tool_timeout, 30.0))


def build_tool_server(args: ToolArgs) -> ToolServer | None:
    """None when no tools are configured (or none could be enabled). Call `await server.start()` next."""
    entries = [entry.strip() for entry in (args.tool_server or "").split(",") if entry.strip()]
    servers: list[ToolServer] = []
    if any(entry.lower() == "demo" for entry in entries):
        servers.extend(tool for tool in (build_python_tool(args), build_browser_tool(args)) if tool is not None)
    servers.extend(McpToolServer(spec, call_timeout_s=args.tool_timeout) for spec in entries if spec.lower() != "demo")
    if not servers:
        return None
    return ToolServerGroup(servers)
