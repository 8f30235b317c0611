"""MCP tool servers over SSE: real servers built with the `mcp` package, started here on 127.0.0.1."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai_harmony
import pytest

pytest.importorskip("mcp", reason="the `mcp` package is not installed")

from oss_serve.tools.base import tool_result_message  # noqa: E402
from oss_serve.tools.mcp_client import McpConnectError, McpToolServer, mcp_sse_url, trim_schema  # noqa: E402
from oss_serve.tools.tool_group import ToolServerGroup  # noqa: E402

SERVER_SCRIPT = '''
import sys
import uvicorn
from mcp.server.mcpserver import MCPServer

server = MCPServer(name="calc", instructions="Arithmetic helpers for tests.")

@server.tool(description="Adds two integers.")
def add(a: int, b: int = 2, note: str | None = None, title: str = "sum") -> str:
    return f"{title}: {a + b}"

@server.tool(description="Always fails.")
def explode() -> str:
    raise RuntimeError("the calculator exploded")

@server.tool(description="Takes a while.")
async def slow(seconds: float) -> str:
    import anyio
    await anyio.sleep(seconds)
    return "done"

uvicorn.run(server.sse_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="error")
'''


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(script: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, str(script), str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            if process.poll() is not None:
                raise RuntimeError("MCP test server exited at start") from None
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("MCP test server did not start")


def stop_server(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def server_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mcp") / "calc_server.py"
    path.write_text(SERVER_SCRIPT)
    return path


@pytest.fixture(scope="module")
def calc_address(server_script: Path) -> Iterator[str]:
    port = free_port()
    process = start_server(server_script, port)
    yield f"127.0.0.1:{port}"
    stop_server(process)


def test_lists_tools_as_a_namespace_named_after_the_server(calc_address: str) -> None:
    async def scenario() -> list[openai_harmony.ToolNamespaceConfig]:
        server = McpToolServer(calc_address)
        await server.start()
        try:
            return server.namespaces()
        finally:
            await server.aclose()

    [namespace] = asyncio.run(scenario())
    assert namespace.name == "calc"
    assert namespace.description == "Arithmetic helpers for tests."
    tools = {tool.name: tool for tool in namespace.tools}
    assert set(tools) == {"add", "explode", "slow"}
    assert tools["add"].description == "Adds two integers."
    schema = tools["add"].parameters
    assert "title" not in schema and "title" not in schema["properties"]["a"]
    assert schema["properties"]["b"] == {"default": 2, "type": "integer"}
    assert "default" not in schema["properties"]["note"]  # null default trimmed
    assert schema["properties"]["title"] == {"default": "sum", "type": "string"}  # a property named title stays
    assert schema["required"] == ["a"]


def test_calls_tools_and_reports_errors_as_text(calc_address: str) -> None:
    async def scenario() -> list:
        server = McpToolServer(calc_address)
        await server.start()
        session = await server.open_session()
        try:
            return [await session.call("calc.add", '{"a": 3}'),
                    await session.call("calc.explode", "{}"),
                    await session.call("calc.add", "{oops"),
                    await session.call("calc.missing", "{}"),
                    await session.call("calc.add", '{"a": "not a number"}')]
        finally:
            await server.aclose()

    added, exploded, bad_json, missing, invalid = asyncio.run(scenario())
    assert added.text == "sum: 5" and not added.is_error
    assert added.recipient == "calc.add"
    assert (added.details.kind, added.details.server_label, added.details.tool_name) == ("mcp", "calc", "add")
    assert added.details.arguments == {"a": 3}
    assert exploded.is_error and "explode" in exploded.text
    assert bad_json.is_error and bad_json.text.startswith("Invalid JSON arguments for calc.add")
    assert missing.is_error and "missing" in missing.text
    assert invalid.is_error


def test_slow_tool_times_out(calc_address: str) -> None:
    async def scenario():
        server = McpToolServer(calc_address, call_timeout_s=0.5)
        await server.start()
        try:
            timed_out = await server.call_tool("calc.slow", '{"seconds": 5}')
            after = await server.call_tool("calc.add", '{"a": 1}')
            return timed_out, after
        finally:
            await server.aclose()

    timed_out, after = asyncio.run(scenario())
    assert timed_out.is_error and "did not answer within 0.5 seconds" in timed_out.text
    assert after.text == "sum: 3"


def test_allowed_tools_limit_what_is_exposed(calc_address: str) -> None:
    async def scenario():
        server = McpToolServer(f"http://{calc_address}/sse", allowed_tools=["add"], namespace="mylabel")
        await server.start()
        try:
            return server, await server.call_tool("mylabel.explode", "{}")
        finally:
            await server.aclose()

    server, refused = asyncio.run(scenario())
    assert [t.name for t in server.namespaces()[0].tools] == ["add"]
    assert server.namespaces()[0].name == "mylabel"
    assert server.has_tool("mylabel.add") and not server.has_tool("mylabel.explode")
    assert server.list_tools_for_api()[0]["name"] == "add"
    assert refused.is_error and "not allowed" in refused.text


def test_server_that_dies_and_comes_back(server_script: Path) -> None:
    port = free_port()

    async def scenario() -> tuple:
        process = start_server(server_script, port)
        server = McpToolServer(f"127.0.0.1:{port}", connect_timeout_s=2)
        await server.start()
        try:
            before = await server.call_tool("calc.add", '{"a": 1}')
            stop_server(process)
            while_down = await server.call_tool("calc.add", '{"a": 1}')
            process = await asyncio.to_thread(start_server, server_script, port)
            after = await server.call_tool("calc.add", '{"a": 2}')
            return before, while_down, after
        finally:
            await server.aclose()
            stop_server(process)

    before, while_down, after = asyncio.run(scenario())
    assert before.text == "sum: 3"
    assert while_down.is_error and "MCP server" in while_down.text
    assert after.text == "sum: 4" and not after.is_error


def test_unreachable_server_fails_to_start_with_its_address() -> None:
    port = free_port()
    server = McpToolServer(f"127.0.0.1:{port}", connect_timeout_s=1)
    with pytest.raises(McpConnectError, match=f"127.0.0.1:{port}"):
        asyncio.run(server.start())


def test_group_routes_by_namespace_and_authors_harmony_messages(calc_address: str) -> None:
    async def scenario():
        group = ToolServerGroup([McpToolServer(calc_address)])
        await group.start()
        session = await group.open_session()
        try:
            return group, await session.call("calc.add", '{"a": 40}'), await session.call("weather.get", "{}")
        finally:
            await session.close()
            await group.aclose()

    group, added, unknown = asyncio.run(scenario())
    assert [n.name for n in group.namespaces()] == ["calc"]
    assert group.has_tool("calc.add") and not group.has_tool("calc")
    assert added.text == "sum: 42"
    assert unknown.is_error and "Unknown tool 'weather.get'" in unknown.text and "calc" in unknown.text
    message = tool_result_message(added, channel="commentary")
    assert message.author.role == openai_harmony.Role.TOOL and message.author.name == "calc.add"
    assert message.recipient == "assistant" and message.channel == "commentary"
    assert message.content[0].text == "sum: 42"


def test_schema_trimming_and_urls() -> None:
    schema = {"title": "Args", "type": "object", "properties": {
        "title": {"title": "Title", "type": "string", "default": None},
        "items": {"type": "array", "items": {"title": "Item", "anyOf": [{"type": "string"}, {"type": "null"}]}}}}
    assert trim_schema(schema) == {"type": "object", "properties": {
        "title": {"type": "string"},
        "items": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}}
    assert mcp_sse_url("localhost:8001") == "http://localhost:8001/sse"
    assert mcp_sse_url("https://tools.example/sse") == "https://tools.example/sse"
