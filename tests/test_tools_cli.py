"""`oss-serve tools list|call`: what a user sees when inspecting and trying tool servers."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from exa_search_double import SearchDouble

from oss_serve import cli
from oss_serve.tools.python_backends import SandboxBackend

REPO_ROOT = Path(__file__).resolve().parents[1]


def oss_serve(*argv: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    clean_env = {k: v for k, v in os.environ.items() if k not in ("EXA_API_KEY", "YDC_API_KEY", "BROWSER_BACKEND")}
    return subprocess.run([sys.executable, "-m", "oss_serve.cli", *argv], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT, env={**clean_env, **(env or {})}, input=stdin)


@pytest.fixture(scope="module")
def sandbox_available() -> None:
    reason = SandboxBackend.unavailable_reason()
    if reason:
        pytest.skip(f"sandbox backend not available: {reason}")


def test_list_demo_prints_the_python_namespace_and_warns_about_the_browser(sandbox_available: None) -> None:
    result = oss_serve("tools", "list", "--tool-server", "demo", "--python-backend", "sandbox", "--tool-timeout", "30")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("## python\n")
    assert "stateless environment" in result.stdout and "time out after 30 seconds" in result.stdout
    assert "browser tool disabled: set EXA_API_KEY or YDC_API_KEY" in result.stderr


def test_call_python_prints_exactly_the_tool_output(sandbox_available: None) -> None:
    result = oss_serve("tools", "call", "--tool-server", "demo", "--python-backend", "sandbox",
                       "python", '{"code": "print(6*7)"}')
    assert (result.returncode, result.stdout) == (0, "42\n")
    from_stdin = oss_serve("tools", "call", "--tool-server", "demo", "--python-backend", "sandbox", "python",
                           stdin="import sys\nsys.version_info[0]")
    assert from_stdin.stdout == "3\n"
    failing = oss_serve("tools", "call", "--tool-server", "demo", "--python-backend", "sandbox", "--tool-timeout", "1",
                        "python", "while True: pass")
    assert failing.returncode == 1 and "timed out after 1 seconds" in failing.stdout


@pytest.fixture
def search_double() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), SearchDouble)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_call_browser_search(search_double: str) -> None:
    result = oss_serve("tools", "call", "--tool-server", "demo", "--python-backend", "uv",
                       "browser.search", '{"query": "sea otters"}',
                       env={"EXA_API_KEY": "k", "EXA_BASE_URL": search_double})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:5] == [
        "[0] Search results for `sea otters` (web-search://?q=sea%20otters)",
        "**viewing lines [0 - 1] of 1**", "", "L0: 【0†Otters†example.org】", "L1: About sea otters."]


def test_list_and_call_an_mcp_server(tmp_path: Path) -> None:
    from test_tools_mcp import SERVER_SCRIPT, free_port, start_server, stop_server

    script = tmp_path / "calc_server.py"
    script.write_text(SERVER_SCRIPT)
    port = free_port()
    process = start_server(script, port)
    try:
        listing = oss_serve("tools", "list", "--tool-server", f"127.0.0.1:{port}")
        called = oss_serve("tools", "call", "--tool-server", f"http://127.0.0.1:{port}/sse", "calc.add", '{"a": 40}')
        failed = oss_serve("tools", "call", "--tool-server", f"127.0.0.1:{port}", "calc.explode", "{}")
        unknown = oss_serve("tools", "call", "--tool-server", f"127.0.0.1:{port}", "calc.nope", "{}")
    finally:
        stop_server(process)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.startswith("## calc\nArithmetic helpers for tests.\n")
    assert "### calc.add\nAdds two integers.\n{" in listing.stdout
    assert (called.returncode, called.stdout) == (0, "sum: 42\n")
    assert failed.returncode == 1 and "explode" in failed.stdout
    assert unknown.returncode == 2 and "no tool 'calc.nope'" in unknown.stderr
    down = oss_serve("tools", "list", "--tool-server", f"127.0.0.1:{port}")
    assert down.returncode == 1 and f"cannot connect to MCP server http://127.0.0.1:{port}/sse" in down.stderr


def test_usage_errors() -> None:
    missing = oss_serve("tools", "list")
    assert missing.returncode == 2 and "--tool-server is required" in missing.stderr
    bad_backend = oss_serve("tools", "list", "--tool-server", "demo", "--python-backend", "jython")
    assert bad_backend.returncode == 2 and "invalid choice" in bad_backend.stderr
    assert oss_serve().returncode == 2
    assert "unknown command 'serve'" in oss_serve("serve").stderr


def test_launch_dispatches_to_launch_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import oss_serve.launch_server as launch_server

    seen: list[list[str]] = []
    monkeypatch.setattr(launch_server, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["launch", "--model-path", "m", "--port", "1234"]) == 0
    assert seen == [["--model-path", "m", "--port", "1234"]]
