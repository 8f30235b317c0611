"""MCP tool servers over SSE, each exposed to the model as one harmony namespace.

One connection per server lives in a background task for the server's whole life (the SSE client
must be entered and left in the same task). When it drops, the next call reconnects; a call that
found the connection already closed is retried once on the new one.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import openai_harmony

from oss_serve.tools.base import ToolCallDetails, ToolResult, ToolServer, ToolSession, split_recipient
from oss_serve.tools.python_tool import code_from_arguments

logger = logging.getLogger(__name__)


class McpConnectError(Exception):
    pass


def mcp_sse_url(spec: str) -> str:
    """`host:port` -> `http://host:port/sse`; full URLs are kept."""
    spec = spec.strip()
    if "://" in spec:
        return spec
    return f"http://{spec}/sse"


def trim_schema(schema: Any) -> Any:
    """Drops what only adds tokens: `title` annotations and `default: null`.

    A property that is literally named "title" is kept: only keys of schema objects are trimmed,
    never the names inside `properties`.
    """
    if isinstance(schema, list):
        return [trim_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    trimmed: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key == "default" and value is None:
            continue
        if key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(value, dict):
            trimmed[key] = {name: trim_schema(sub) for name, sub in value.items()}
        else:
            trimmed[key] = trim_schema(value)
    return trimmed


@dataclass
class McpTool:
    name: str
    description: str
    input_schema: dict[str, Any]


def _is_connection_closed(error: BaseException) -> bool:
    from mcp.shared.exceptions import MCPError
    from mcp_types import CONNECTION_CLOSED

    return isinstance(error, MCPError) and error.error.code == CONNECTION_CLOSED


def _result_text(result: Any) -> str:
    parts: list[str] = []
    for item in getattr(result, "content", None) or []:
        if getattr(item, "type", None) == "text":
            parts.append(item.text)
        elif getattr(item, "type", None) == "resource" and getattr(item.resource, "text", None):
            parts.append(item.resource.text)
        else:
            parts.append(f"[{getattr(item, 'type', 'unknown')} content omitted]")
    if not parts and getattr(result, "structured_content", None) is not None:
        parts.append(json.dumps(result.structured_content))
    return "\n".join(parts)


class McpToolServer(ToolServer):
    def __init__(self, url: str, *, headers: dict[str, str] | None = None, allowed_tools: list[str] | None = None,
                 namespace: str | None = None, call_timeout_s: float = 120.0, connect_timeout_s: float = 10.0) -> None:
        self.url = mcp_sse_url(url)
        self.headers = headers
        self.allowed_tools = set(allowed_tools) if allowed_tools is not None else None
        self.namespace_override = namespace
        self.call_timeout_s = call_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.server_name = ""
        self.instructions = ""
        self.tools: list[McpTool] = []
        self._session: Any = None
        self._holder: asyncio.Task[None] | None = None
        self._release: asyncio.Event | None = None
        self._connect_lock = asyncio.Lock()

    @property
    def namespace(self) -> str:
        return self.namespace_override or self.server_name

    async def start(self) -> None:
        await self._connect()

    async def _hold_connection(self, ready: asyncio.Future[Any], release: asyncio.Event) -> None:
        from mcp import ClientSession
        from mcp.client.sse import sse_client

        try:
            async with sse_client(self.url, headers=self.headers, timeout=self.connect_timeout_s) as (reader, writer):
                async with ClientSession(reader, writer) as session:
                    initialized = await session.initialize()
                    listed = await session.list_tools()
                    ready.set_result((session, initialized, listed))
                    await release.wait()
        except BaseException as error:  # noqa: BLE001 - reported through `ready` or the log
            if not ready.done():
                ready.set_exception(McpConnectError(f"cannot connect to MCP server {self.url}: {_describe(error)}"))
            elif not isinstance(error, asyncio.CancelledError):
                logger.warning("MCP server %s: connection ended: %s", self.url, _describe(error))

    async def _connect(self) -> Any:
        async with self._connect_lock:
            if self._session is not None and self._holder is not None and not self._holder.done():
                return self._session
            await self._disconnect()
            ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._release = asyncio.Event()
            self._holder = asyncio.create_task(self._hold_connection(ready, self._release))
            try:
                session, initialized, listed = await asyncio.wait_for(ready, self.connect_timeout_s + 5)
            except TimeoutError:
                # A server that never answered has nothing to close gracefully: don't wait for it.
                self._holder.cancel()
                await self._disconnect()
                raise McpConnectError(f"cannot connect to MCP server {self.url}: timed out") from None
            except McpConnectError:
                await self._disconnect()
                raise
            self._session = session
            self.server_name = initialized.server_info.name if initialized.server_info else self.server_name
            self.instructions = initialized.instructions or ""
            self.tools = [McpTool(t.name, t.description or "", trim_schema(t.input_schema or {}))
                          for t in listed.tools
                          if self.allowed_tools is None or t.name in self.allowed_tools]
            return session

    async def _disconnect(self) -> None:
        self._session = None
        if self._release is not None:
            self._release.set()
        if self._holder is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._holder), 5)
            except (TimeoutError, asyncio.CancelledError, Exception):
                self._holder.cancel()
                with contextlib.suppress(BaseException):
                    await self._holder
        self._holder = None
        self._release = None

    async def aclose(self) -> None:
        async with self._connect_lock:
            await self._disconnect()

    @property
    def is_python_like_builtin(self) -> bool:
        """A server named `python` whose one tool is `python` stands in for the built-in python tool:
        the model sees the same bare namespace as with `--tool-server demo`, calls recipient `python`
        and writes raw code, which goes to the tool as {"code": ...} (gpt-oss's own convention)."""
        return self.namespace == "python" and [t.name for t in self.tools] == ["python"]

    def namespaces(self) -> list[openai_harmony.ToolNamespaceConfig]:
        if not self.namespace:
            return []
        tools = [] if self.is_python_like_builtin else [
            openai_harmony.ToolDescription.new(t.name, t.description, parameters=t.input_schema) for t in self.tools]
        return [openai_harmony.ToolNamespaceConfig(name=self.namespace, description=self.instructions or None,
                                                   tools=tools)]

    def list_tools_for_api(self) -> list[dict[str, Any]]:
        """The `tools` of a Responses `mcp_list_tools` item."""
        return [{"name": t.name, "description": t.description, "input_schema": t.input_schema} for t in self.tools]

    def has_tool(self, recipient: str) -> bool:
        namespace, tool = split_recipient(recipient)
        if tool is None and self.is_python_like_builtin:
            return namespace == "python"
        return namespace == self.namespace and any(t.name == tool for t in self.tools)

    async def open_session(self) -> McpSession:
        return McpSession(self)

    async def call_tool(self, recipient: str, arguments: str) -> ToolResult:
        _, tool = split_recipient(recipient)
        if tool is None and self.is_python_like_builtin:
            tool, arguments = "python", json.dumps({"code": code_from_arguments(arguments)})
        details = ToolCallDetails(kind="mcp", server_label=self.namespace, tool_name=tool)

        def failure(message: str) -> ToolResult:
            return ToolResult(recipient, message, details, is_error=True)

        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except ValueError as error:
            return failure(f"Invalid JSON arguments for {recipient}: {error}")
        if not isinstance(parsed, dict):
            return failure(f"Arguments for {recipient} must be a JSON object.")
        details.arguments = parsed
        if self.allowed_tools is not None and tool not in self.allowed_tools:
            return failure(f"Tool {recipient!r} is not allowed.")
        for _ in range(2):  # a connection found closed is reopened and the call retried once
            try:
                session = await self._connect()
            except McpConnectError as error:
                return failure(f"Error: {error}")
            try:
                result = await asyncio.wait_for(session.call_tool(tool, parsed), self.call_timeout_s)
            except TimeoutError:
                return failure(f"Error: {recipient} did not answer within {self.call_timeout_s:g} seconds.")
            except Exception as error:  # noqa: BLE001 - any failure goes back to the model
                if _is_connection_closed(error):
                    async with self._connect_lock:
                        await self._disconnect()
                    continue
                return failure(f"Error: {_describe(error)}")
            text = _result_text(result)
            return ToolResult(recipient, text, details, is_error=bool(getattr(result, "is_error", False)))
        return failure(f"Error: the connection to MCP server {self.url} was lost.")


class McpSession(ToolSession):
    """MCP servers keep no per-response state here: calls go to the shared connection."""

    def __init__(self, server: McpToolServer) -> None:
        self.server = server

    async def call(self, recipient: str, arguments: str) -> ToolResult:
        return await self.server.call_tool(recipient, arguments)


def _describe(error: BaseException) -> str:
    """Readable text for the often nested exception groups that anyio raises."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return str(error) or type(error).__name__
