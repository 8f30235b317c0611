"""The tool-server contract: what the API layer uses to describe tools to the model and run them.

`build_tool_server(args)` (oss_serve.tools.factory) turns --tool-server "demo" (python + browser),
"host:port" / "http://host:port/sse" (MCP), comma-separated and combinable, into one ToolServer, or
None when nothing is configured or could be enabled. Then: `await server.start()` in the serving
loop, one `open_session()` per response, `await server.aclose()` at shutdown.

Per-request MCP tools (Responses `{"type": "mcp", ...}`): build
`McpToolServer(server_url, headers=..., allowed_tools=..., namespace=server_label)`, `await start()`,
report `list_tools_for_api()` as the `mcp_list_tools` item, call it, then `await aclose()`.

Harmony authoring of a result: role `tool`, author name = the recipient the model addressed
(`python`, `browser.search`, `mymcp.add`), recipient `assistant`, channel = the channel of the call
(built-in tool calls are made on `analysis`, function-style calls on `commentary`), content =
`ToolResult.text`. `tool_result_message` builds it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

import openai_harmony

# The API layer maps these onto Responses output items: `code_interpreter_call` (code, logs),
# `web_search_call` (action search/open_page/find with query/url/pattern), `mcp_call`.
ToolKind = Literal["python", "browser", "mcp"]


@dataclass
class ToolCallDetails:
    kind: ToolKind
    # python: the executed code; browser: the action and its target; mcp: server label and tool name
    code: str | None = None
    action: Literal["search", "open_page", "find"] | None = None
    query: str | None = None
    url: str | None = None
    pattern: str | None = None
    server_label: str | None = None
    tool_name: str | None = None
    arguments: dict[str, Any] | None = None
    timed_out: bool = False


@dataclass
class ToolResult:
    recipient: str  # who answers: the harmony author name of the tool message
    text: str  # exactly what the model receives
    details: ToolCallDetails  # structured facts for the API output items
    is_error: bool = False  # a failure, timeout or crash (the text says what happened)


class ToolSession(ABC):
    """State for one response (or conversation): browser pages and cursors, a stateful python interpreter."""

    @abstractmethod
    async def call(self, recipient: str, arguments: str) -> ToolResult:
        """Run one call. `arguments` is the raw text the model wrote: JSON for functions, code for python.

        Failures and timeouts are returned as text with `is_error=True`, never raised."""

    def annotate(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """Final answer `text` with browser citations 【cursor†Lx-Ly】 of this session's pages made into
        markdown links, and their `url_citation` annotations (type, url, title, start_index, end_index)."""
        return text, []

    async def close(self) -> None:
        return None


class ToolServer(ABC):
    @abstractmethod
    def namespaces(self) -> list[openai_harmony.ToolNamespaceConfig]:
        """What goes into the harmony system message. Built-ins are named `browser` and `python`, with
        descriptions that match the running backend; each MCP server is one namespace named after its
        serverInfo.name."""

    @abstractmethod
    def has_tool(self, recipient: str) -> bool:
        """Whether `recipient`, as the model writes it after `to=` ("python", "browser.search",
        "<mcp_namespace>.<tool>"), names a tool this server runs."""

    async def start(self) -> None:
        """Call once (in the serving event loop) before namespaces(): connects MCP servers and lists
        their tools. Built-in tools need nothing."""
        return None

    @abstractmethod
    async def open_session(self) -> ToolSession:
        ...

    async def aclose(self) -> None:
        """Server shutdown: drops MCP connections."""
        return None


def split_recipient(recipient: str) -> tuple[str, str | None]:
    """"browser.search" -> ("browser", "search"); "python" -> ("python", None)."""
    namespace, _, tool = recipient.strip().partition(".")
    return namespace, (tool or None)


def tool_kind(recipient: str) -> ToolKind:
    """Which built-in a recipient names ("python", "browser.*"); anything else is an MCP tool."""
    namespace, _ = split_recipient(recipient)
    return "python" if namespace == "python" else "browser" if namespace == "browser" else "mcp"


def tool_result_message(result: ToolResult, channel: str = "analysis") -> openai_harmony.Message:
    """The harmony message that carries `result` back to the model.

    `channel` must be the channel the call was made on: built-in tools are called on `analysis`,
    MCP and function-style tools usually on `commentary`.
    """
    author = openai_harmony.Author(role=openai_harmony.Role.TOOL, name=result.recipient)
    return (openai_harmony.Message.from_author_and_content(author, result.text)
            .with_recipient("assistant")
            .with_channel(channel))


def error_result(recipient: str, kind: ToolKind, message: str, **details: Any) -> ToolResult:
    return ToolResult(recipient=recipient, text=message, is_error=True,
                      details=ToolCallDetails(kind=kind, **details))
