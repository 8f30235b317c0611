"""The tool-server contract: what the API layer uses to describe tools to the model and run them.

    class ToolServer(ABC):
        def namespaces(self) -> list[openai_harmony.ToolNamespaceConfig]
            # What goes into the harmony system message (SystemContent.with_tools(namespace)).
            # Built-ins are named `browser` and `python`, with descriptions that match the running
            # backend; each MCP server is one namespace named after its serverInfo.name.
        def has_tool(self, recipient: str) -> bool
            # recipient as the model writes it after `to=`: "python", "browser.search",
            # "<mcp_namespace>.<tool>".
        async def start(self) -> None
            # Call once (in the serving event loop) before namespaces(): connects MCP servers and
            # lists their tools. Built-in tools need nothing.
        async def open_session(self) -> ToolSession
            # One per response (or conversation): holds browser pages and cursors, and the
            # python interpreter when the stateful mode is on.
        async def aclose(self) -> None
            # Server shutdown: drops MCP connections.

    class ToolSession(ABC):
        async def call(self, recipient: str, arguments: str) -> ToolResult
            # `arguments` is the raw text the model wrote: JSON for functions, code for python.
            # Never raises for tool failures or timeouts: they come back as result text with
            # `is_error=True`.
        def annotate(self, text: str) -> tuple[str, list[dict]]
            # Final answer text with browser citations 【cursor†Lx-Ly】 turned into markdown links,
            # plus `url_citation` annotations (type, url, title, start_index, end_index).
        async def close(self) -> None

    @dataclass ToolResult:
        recipient: str        # who answers: the harmony author name of the tool message
        text: str             # exactly what the model receives
        details: ToolCallDetails   # structured facts for API output items (see below)
        is_error: bool        # a failure, timeout or crash (the text says what happened)

    build_tool_server(args: ToolArgs) -> ToolServer | None   (oss_serve.tools.factory)
        # --tool-server "demo" (python + browser), "host:port" / "http://host:port/sse" (MCP),
        # comma-separated and combinable. None when nothing is configured or could be enabled.
        # Then: `await server.start()` in the serving loop, `await server.aclose()` at shutdown.
    tool_result_message(result, channel=...) -> openai_harmony.Message

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
from dataclasses import dataclass, field
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
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ToolResult:
    recipient: str
    text: str
    details: ToolCallDetails
    is_error: bool = False


class ToolSession(ABC):
    @abstractmethod
    async def call(self, recipient: str, arguments: str) -> ToolResult:
        """Run one call. Failures and timeouts are returned as text, never raised."""

    def annotate(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """`text` with citations of this session's pages made into links, and their annotations."""
        return text, []

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> ToolSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class ToolServer(ABC):
    @abstractmethod
    def namespaces(self) -> list[openai_harmony.ToolNamespaceConfig]:
        """Namespaces to describe in the system message."""

    @abstractmethod
    def has_tool(self, recipient: str) -> bool:
        """Whether `recipient` (e.g. "browser.search") names a tool this server runs."""

    async def start(self) -> None:
        """Connects what needs connecting; call once before namespaces()."""
        return None

    @abstractmethod
    async def open_session(self) -> ToolSession:
        """State for one response or conversation."""

    async def aclose(self) -> None:
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
