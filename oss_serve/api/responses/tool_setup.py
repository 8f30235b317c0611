"""The request's `tools` against what this server runs: which functions and tool namespaces the
model is shown, who executes its calls, and which calls `tool_choice` forces the first reply
to end in (the grammar that holds it to one is made in structured_outputs.py).

Built-in tools (code_interpreter -> `python`, web_search -> `browser`, server-level MCP servers)
come from `--tool-server`; a request naming one the server does not have is a 400 that says
which flag enables it. Request-level `mcp` tools with a `server_url` are connected for this
response only and closed with it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from openai_harmony import ToolNamespaceConfig

from oss_serve.api.errors import APIError
from oss_serve.api.responses.request import WEB_SEARCH_TOOL_TYPES, ResponsesRequest
from oss_serve.api.structured_outputs import function_call_target
from oss_serve.engine.structured.call_grammar import CallTarget, loose_arguments_schema
from oss_serve.engine.structured.spec import GrammarSpec
from oss_serve.harmony import render
from oss_serve.tools.base import ToolServer, split_recipient
from oss_serve.tools.browser_backends import missing_search_key
from oss_serve.tools.mcp_client import McpConnectError, McpToolServer
from oss_serve.tools.tool_group import ToolServerGroup

logger = logging.getLogger(__name__)

BUILTIN_NAMESPACE_BY_TOOL_TYPE = {"code_interpreter": "python",
                                  **{tool_type: "browser" for tool_type in WEB_SEARCH_TOOL_TYPES}}
HOW_TO_ENABLE_PYTHON = ("start the server with `--tool-server demo` (the python tool; pick a backend with "
                        "--python-backend or PYTHON_EXECUTION_BACKEND)")


@dataclass
class ResponseTools:
    """What one response may use."""
    function_tools: list[render.FunctionTool] = field(default_factory=list)
    namespaces: list[ToolNamespaceConfig] = field(default_factory=list)  # shown in the system message
    executor: ToolServer | None = None  # runs built-in and MCP calls
    mcp_labels: set[str] = field(default_factory=set)  # namespaces whose calls are `mcp_call` items
    mcp_list_tools: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)  # (label, tools)
    request_mcp_servers: list[McpToolServer] = field(default_factory=list)
    forced_targets: list[CallTarget] = field(default_factory=list)  # tool_choice: the first reply calls one

    @property
    def function_names(self) -> list[str]:
        return [tool.name for tool in self.function_tools]

    @property
    def namespace_names(self) -> list[str]:
        return [namespace.name for namespace in self.namespaces]

    def runs(self, recipient: str) -> bool:
        """Whether a call to `recipient` is executed here (shown to the model and available)."""
        namespace, _ = split_recipient(recipient)
        return (namespace in self.namespace_names and self.executor is not None
                and self.executor.has_tool(recipient))

    async def aclose(self) -> None:
        for server in self.request_mcp_servers:
            try:
                await server.aclose()
            except Exception:  # noqa: BLE001 - closing must not fail a finished response
                logger.warning("closing MCP server %s failed", server.url, exc_info=True)


def _server_namespaces(server_tools: ToolServer | None) -> dict[str, ToolNamespaceConfig]:
    return {namespace.name: namespace for namespace in (server_tools.namespaces() if server_tools else [])}


async def resolve_tools(request: ResponsesRequest, server_tools: ToolServer | None, *,
                        mcp_call_timeout_s: float, strict: dict[str, GrammarSpec]) -> ResponseTools:
    """400s for tools we cannot serve; connects request-level MCP servers. `strict`: the strict
    functions' argument grammars."""
    available = _server_namespaces(server_tools)
    tools = ResponseTools()
    executors: list[ToolServer] = [server_tools] if server_tools is not None else []
    shown: dict[str, ToolNamespaceConfig] = {}
    try:
        for index, spec in enumerate(request.tools):
            tool_type = spec.get("type")
            if tool_type == "function":
                name = spec.get("name") or (spec.get("function") or {}).get("name")
                if not name:
                    raise APIError(f"tools[{index}] is a function without a name.", param=f"tools[{index}].name")
                tools.function_tools.append(render.FunctionTool(
                    name, spec.get("description") or "", spec.get("parameters")))
            elif tool_type in BUILTIN_NAMESPACE_BY_TOOL_TYPE:
                namespace = BUILTIN_NAMESPACE_BY_TOOL_TYPE[tool_type]
                if namespace not in available:
                    raise APIError(_not_enabled_message(tool_type, namespace, available),
                                   param=f"tools[{index}].type", code="tool_not_enabled")
                shown[namespace] = available[namespace]
            elif tool_type == "mcp":
                await _add_mcp_tool(tools, spec, index, available, shown, executors, mcp_call_timeout_s)
            else:
                raise APIError(f"tools[{index}] has type {tool_type!r}, which this server does not support "
                               "(function, code_interpreter, web_search_preview / web_search, mcp).",
                               param=f"tools[{index}].type")
        if request.tool_choice == "none":
            tools.function_tools, shown = [], {}
        tools.namespaces = list(shown.values())
        if executors:
            tools.executor = executors[0] if len(executors) == 1 else ToolServerGroup(executors)
        tools.forced_targets = _tool_choice_targets(request.tool_choice, tools, strict)
    except BaseException:
        await tools.aclose()
        raise
    return tools


def _not_enabled_message(tool_type: str, namespace: str, available: dict[str, ToolNamespaceConfig]) -> str:
    if namespace == "python":
        return (f"The tool '{tool_type}' needs the built-in `python` tool, which this server was not started "
                f"with: {HOW_TO_ENABLE_PYTHON}.")
    # The demo tools are on (python is there) but web search is not: only the key is missing.
    demo = "" if "python" in available else " and start it with `--tool-server demo`"
    return (f"The tool '{tool_type}' needs a web search key, which this server does not have: set "
            f"{missing_search_key()} in the server's environment{demo}.")


async def _add_mcp_tool(tools: ResponseTools, spec: dict[str, Any], index: int,
                        available: dict[str, ToolNamespaceConfig], shown: dict[str, ToolNamespaceConfig],
                        executors: list[ToolServer], call_timeout_s: float) -> None:
    label = spec.get("server_label")
    if not label:
        raise APIError(f"tools[{index}] is an mcp tool without a server_label.", param=f"tools[{index}].server_label")
    url = spec.get("server_url")
    if not url:
        # No URL: one of the MCP servers the server was started with, by its name.
        if label not in available:
            raise APIError(f"tools[{index}] names the MCP server '{label}' without a server_url, and this server "
                           f"was not started with an MCP server of that name (--tool-server host:port).",
                           param=f"tools[{index}].server_url", code="tool_not_enabled")
        shown[label] = available[label]
        tools.mcp_labels.add(label)
        return
    allowed = spec.get("allowed_tools")
    if isinstance(allowed, dict):  # the filter form {"tool_names": [...]}
        allowed = allowed.get("tool_names")
    server = McpToolServer(url, headers=spec.get("headers"), allowed_tools=allowed, namespace=label,
                           call_timeout_s=call_timeout_s)
    tools.request_mcp_servers.append(server)  # before start(): a half-started connection is closed too
    try:
        await server.start()
    except McpConnectError as error:
        raise APIError(f"tools[{index}]: {error}", param=f"tools[{index}].server_url",
                       code="mcp_connection_failed") from None
    executors.insert(0, server)  # the request's own server wins over a same-named server-level one
    shown.update({namespace.name: namespace for namespace in server.namespaces()})
    tools.mcp_labels.add(label)
    tools.mcp_list_tools.append((label, server.list_tools_for_api()))


def _namespace_targets(tools: ResponseTools, namespace: str, tool_name: str | None = None) -> list[CallTarget]:
    """Calls into a built-in or MCP namespace: python takes code, the others a JSON object."""
    config = next((config for config in tools.namespaces if config.name == namespace), None)
    if config is None:
        return []
    if not config.tools:
        return [CallTarget(namespace, render.ANALYSIS, None)]
    channel = render.COMMENTARY if namespace in tools.mcp_labels else render.ANALYSIS
    return [CallTarget(f"{namespace}.{tool.name}", channel, json.dumps(loose_arguments_schema(tool.parameters)))
            for tool in config.tools if tool_name is None or tool.name == tool_name]


def _tool_choice_targets(choice: str | dict[str, Any], tools: ResponseTools,
                         strict: dict[str, GrammarSpec]) -> list[CallTarget]:
    """The calls the first reply must end in: none for auto / none."""
    functions = [function_call_target(tool.name, tool.parameters, strict) for tool in tools.function_tools]
    if choice in ("auto", "none"):
        return []
    if choice == "required":
        if not functions and not tools.namespaces:
            raise APIError("tool_choice is 'required' but no tools were given.", param="tool_choice")
        return functions + [target for name in tools.namespace_names for target in _namespace_targets(tools, name)]
    assert isinstance(choice, dict)
    choice_type = choice.get("type")
    if choice_type == "function":
        name = choice.get("name") or (choice.get("function") or {}).get("name")
        if name not in tools.function_names:
            raise APIError(f"tool_choice names the function '{name}', which is not in tools "
                           f"({', '.join(tools.function_names) or 'none given'}).", param="tool_choice")
        return [target for target in functions if target.recipient == f"functions.{name}"]
    if choice_type in BUILTIN_NAMESPACE_BY_TOOL_TYPE:
        namespace = BUILTIN_NAMESPACE_BY_TOOL_TYPE[choice_type]
        if namespace not in tools.namespace_names:
            raise APIError(f"tool_choice asks for '{choice_type}', which is not in tools.", param="tool_choice")
        return _namespace_targets(tools, namespace)
    if choice_type == "mcp":
        label, name = choice.get("server_label"), choice.get("name")
        if label not in tools.mcp_labels:
            raise APIError(f"tool_choice names the MCP server '{label}', which is not in tools.", param="tool_choice")
        targets = _namespace_targets(tools, label, name)
        if not targets:
            raise APIError(f"tool_choice names the tool '{name}', which the MCP server '{label}' does not list.",
                           param="tool_choice")
        return targets
    raise APIError(f"tool_choice of type {choice_type!r} is not supported.", param="tool_choice")
