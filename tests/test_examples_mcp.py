"""examples/mcp/: the example MCP servers start, and `oss-serve tools` reaches them over SSE."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("mcp", reason="the `mcp` package is not installed")

import openai_harmony  # noqa: E402
from exa_search_double import SearchDouble

from oss_serve.tools.mcp_client import McpToolServer  # noqa: E402
from oss_serve.tools.python_backends import SandboxBackend, UvBackend  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples" / "mcp"
SEARCH_KEYS = ("EXA_API_KEY", "YDC_API_KEY", "BROWSER_BACKEND")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name not in SEARCH_KEYS}


def oss_serve_tools(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oss_serve.cli", "tools", *argv], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT, env=clean_env())


def isolated_backend() -> str:
    """The sandbox where it works, else uv (host code, fine for `print(6*7)`), else skip."""
    sandbox_reason = SandboxBackend.unavailable_reason()
    if sandbox_reason is None:
        return "sandbox"
    uv_reason = UvBackend.unavailable_reason()
    if uv_reason is None:
        return "uv"
    pytest.skip(f"no python backend can run here: sandbox: {sandbox_reason}; uv: {uv_reason}")


def start_example(script: str, *flags: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Starts examples/mcp/<script> on a free port; returns it once it accepts connections."""
    port = free_port()
    process = subprocess.Popen([sys.executable, str(EXAMPLES / script), "--host", "127.0.0.1", "--port", str(port),
                                *flags], cwd=REPO_ROOT, env={**clean_env(), **(env or {})},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, f"127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"{script} exited at start: {process.stderr.read()}") from None
            if time.monotonic() > deadline:
                stop(process)
                raise RuntimeError(f"{script} did not start listening within 20 s") from None
            time.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def python_example_address() -> Iterator[str]:
    process, address = start_example("python_server.py", "--python-backend", isolated_backend(),
                                     "--tool-timeout", "20")
    yield address
    stop(process)


@pytest.fixture(scope="module")
def browser_example_address() -> Iterator[str]:
    search_double = ThreadingHTTPServer(("127.0.0.1", 0), SearchDouble)
    threading.Thread(target=search_double.serve_forever, daemon=True).start()
    process, address = start_example("browser_server.py", env={
        "EXA_API_KEY": "k", "EXA_BASE_URL": f"http://127.0.0.1:{search_double.server_address[1]}"})
    yield address
    stop(process)
    search_double.shutdown()
    search_double.server_close()


def test_python_example_lists_the_python_namespace_with_our_description(python_example_address: str) -> None:
    listed = oss_serve_tools("list", "--tool-server", python_example_address)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("## python\n")
    # The instructions are the built-in tool's own description, timeout included.
    assert "stateless environment" in listed.stdout and "time out after 20 seconds" in listed.stdout
    # Shown to the model exactly like the built-in python tool: a bare namespace, no function list.
    assert "### python.python" not in listed.stdout


def test_python_example_returns_exactly_what_the_python_tool_prints(python_example_address: str) -> None:
    # Addressed as the built-in tool is: recipient `python`, raw code (or {"code": ...}).
    called = oss_serve_tools("call", "--tool-server", python_example_address, "python", "print(6*7)")
    assert (called.returncode, called.stdout) == (0, "42\n"), called.stderr
    crashed = oss_serve_tools("call", "--tool-server", python_example_address, "python",
                              '{"code": "import os; os._exit(3)"}')
    assert crashed.returncode == 1 and "exited with code 3" in crashed.stdout


def test_browser_example_without_a_search_key_exits_with_a_clear_message() -> None:
    started = subprocess.run([sys.executable, str(EXAMPLES / "browser_server.py"), "--port", str(free_port())],
                             capture_output=True, text=True, timeout=30, cwd=REPO_ROOT, env=clean_env())
    assert started.returncode == 1
    assert "browser is disabled without a search provider: set EXA_API_KEY" in started.stderr


def test_browser_example_offers_the_builtin_browser_namespace(browser_example_address: str) -> None:
    async def listed() -> list[openai_harmony.ToolNamespaceConfig]:
        server = McpToolServer(browser_example_address)
        await server.start()
        try:
            return server.namespaces()
        finally:
            await server.aclose()

    [namespace] = asyncio.run(listed())
    builtin = openai_harmony.ToolNamespaceConfig.browser()
    assert (namespace.name, namespace.description) == ("browser", builtin.description)
    assert {tool.name: tool.description for tool in namespace.tools} == {
        tool.name: tool.description for tool in builtin.tools}


def test_browser_example_keeps_pages_per_connection(browser_example_address: str) -> None:
    async def search_then_find() -> list[str]:
        server = McpToolServer(browser_example_address)
        await server.start()
        try:
            session = await server.open_session()
            searched = await session.call("browser.search", '{"query": "sea otters"}')
            found = await session.call("browser.find", '{"pattern": "About", "cursor": 0}')
            return [searched.text, found.text]
        finally:
            await server.aclose()

    searched, found = asyncio.run(search_then_find())
    assert searched.splitlines()[:5] == [
        "[0] Search results for `sea otters` (web-search://?q=sea%20otters)",
        "**viewing lines [0 - 1] of 1**", "", "L0: 【0†Otters†example.org】", "L1: About sea otters."]
    # `find` on cursor 0 only works if the server remembered the search page of this connection.
    assert found.startswith("[1] Find results for text: `About`"), found
