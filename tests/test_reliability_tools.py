"""Tools under attack and under failure: sandbox escapes, broken MCP servers, a failing search
provider, and browser requests aimed at the server's own network.

Extends test_tools_python.py / test_tools_mcp.py / test_tools_browser.py (which already cover
/etc/shadow, home, writes outside /tmp, TCP to the host, memory and fork bombs, a plain
infinite loop, a slow MCP tool and an MCP server that dies between calls) and reuses their
fixtures and doubles rather than repeating them.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_tools_browser import API_KEY as EXA_KEY
from test_tools_browser import ExaDouble, call, make_session
from test_tools_python import isolating_backend, run_code  # noqa: F401 - the fixture is used by name

from oss_serve.tools import web_fetch
from oss_serve.tools.browser_backends import ExaBackend
from oss_serve.tools.browser_tool import BrowserToolServer
from oss_serve.tools.python_backends import PythonBackend

# --- python sandbox escapes (sandbox and docker backends) ---


def test_signalling_the_server_is_impossible(isolating_backend: PythonBackend) -> None:
    # Signal 0 only asks "could I signal it?": the answer for the server's pid must be no.
    code = (f"import os\ntry:\n    os.kill({os.getpid()}, 0)\n    print('server reachable')\n"
            "except OSError as error:\n    print('server unreachable', type(error).__name__)\n"
            "os.kill(-1, 9)  # everything it may signal: only its own box\n")
    result, after = asyncio.run(run_code(isolating_backend, code, "print('alive')"))
    assert result.text.startswith("server unreachable"), result.text
    assert after.text == "alive"  # the next call gets a fresh interpreter; this process lives on


def test_proc_does_not_lead_out_of_the_sandbox(isolating_backend: PythonBackend) -> None:
    server_pid = os.getpid()
    code = (
        "import os\n"
        f"print('host pid visible:', os.path.exists('/proc/{server_pid}/environ') and {server_pid} > 50)\n"
        "print('pids:', len([p for p in os.listdir('/proc') if p.isdigit()]) < 20)\n"
        "for path in ['/proc/1/root/etc/shadow', '/proc/1/cwd', '/proc/self/root/etc/shadow']:\n"
        "    try:\n"
        "        os.listdir(path) if os.path.isdir(path) else open(path).read()\n"
        "        print(path, 'readable')\n"
        "    except OSError:\n"
        "        print(path, 'hidden')\n"
        "try:\n    open('/proc/sys/kernel/hostname', 'w').write('owned')\n    print('sysctl written')\n"
        "except OSError:\n    print('sysctl refused')\n"
        "try:\n    open('/proc/sysrq-trigger', 'w').write('h')\n    print('sysrq written')\n"
        "except OSError:\n    print('sysrq refused')\n")
    [result] = asyncio.run(run_code(isolating_backend, code))
    lines = result.text.splitlines()
    assert lines[0] == "host pid visible: False", result.text
    assert lines[1] == "pids: True", result.text  # its own pid namespace: a handful of processes
    assert "/proc/1/root/etc/shadow hidden" in lines and "/proc/self/root/etc/shadow hidden" in lines
    assert "sysctl refused" in lines and "sysrq refused" in lines


def test_server_working_directory_and_its_files_are_invisible(isolating_backend: PythonBackend) -> None:
    cwd = os.getcwd()
    code = (f"import os\nfor path in [{cwd!r}, {os.path.join(cwd, 'pyproject.toml')!r}, '/work', '/root']:\n"
            "    try:\n        os.listdir(path) if os.path.isdir(path) else open(path).read()\n"
            "        print(path, 'readable')\n    except OSError:\n        print(path, 'hidden')\n"
            "print('cwd', os.getcwd())")
    [result] = asyncio.run(run_code(isolating_backend, code))
    assert "readable" not in result.text, result.text
    assert result.text.splitlines()[-1] == "cwd /tmp"


def test_unix_sockets_and_device_writes_are_refused(isolating_backend: PythonBackend) -> None:
    # The docker daemon's socket and abstract-namespace sockets (shared with the host unless the
    # network namespace is private) are the classic ways out of a network-less box.
    host_listener = socket.socket(socket.AF_UNIX)
    abstract_name = f"\0oss-serve-test-{os.getpid()}"
    host_listener.bind(abstract_name)
    host_listener.listen()
    code = (f"import socket\nfor address in ['/var/run/docker.sock', '/run/docker.sock', {abstract_name!r}]:\n"
            "    s = socket.socket(socket.AF_UNIX)\n    try:\n        s.connect(address)\n"
            "        print(repr(address), 'connected')\n    except OSError:\n        print(repr(address), 'refused')\n"
            "import os, stat\n"
            "devices = sorted(name for name in os.listdir('/dev')\n"
            "                 if stat.S_ISBLK(os.lstat('/dev/' + name).st_mode)\n"
            "                 or stat.S_ISCHR(os.lstat('/dev/' + name).st_mode))\n"
            "print('devices', ' '.join(devices))\n"
            "try:\n    open('/sys/kernel/x', 'wb').write(b'x')\n    print('/sys written')\n"
            "except OSError:\n    print('/sys refused')")
    try:
        [result] = asyncio.run(run_code(isolating_backend, code))
    finally:
        host_listener.close()
    assert "connected" not in result.text, result.text
    # Only the harmless character devices; no disks, no /dev/mem, no kmsg (writes to /dev land in
    # the box's own tmpfs).
    [devices] = [line.split()[1:] for line in result.text.splitlines() if line.startswith("devices")]
    assert set(devices) <= {"null", "zero", "full", "random", "urandom", "tty", "console", "ptmx"}, devices
    assert "/sys refused" in result.text


def test_a_gigabyte_to_stdout_is_cut_and_bounded(isolating_backend: PythonBackend) -> None:
    code = ("import sys\nchunk = b'y' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.buffer.write(chunk)\n"
            "sys.stdout.flush()\nprint('END')")
    started = time.monotonic()
    [result] = asyncio.run(run_code(isolating_backend, code, timeout_s=30))
    assert time.monotonic() - started < 40
    assert len(result.text) < 20_000, len(result.text)
    assert "truncated" in result.text or result.details.timed_out


def test_loop_that_ignores_sigterm_still_times_out(isolating_backend: PythonBackend) -> None:
    code = ("import signal\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "while True:\n    pass")
    started = time.monotonic()
    result, after = asyncio.run(run_code(isolating_backend, code, "print('alive')", timeout_s=2))
    assert time.monotonic() - started < 25
    assert result.is_error and result.details.timed_out
    assert after.text == "alive"


def test_background_process_does_not_outlive_the_session(isolating_backend: PythonBackend) -> None:
    marker = f"oss-serve-orphan-{os.getpid()}"
    code = ("import subprocess, sys\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', {marker!r}],"
            " start_new_session=True)\nprint('spawned')")
    [result] = asyncio.run(run_code(isolating_backend, code))
    assert "spawned" in result.text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        leftovers = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.strip()
        if not leftovers:
            break
        time.sleep(0.2)
    assert leftovers == "", "a process started by the tool outlived its session"


# --- MCP servers that hang, die mid-call, or talk garbage ---

pytest.importorskip("mcp", reason="the `mcp` package is not installed")
from test_tools_mcp import SERVER_SCRIPT, free_port, start_server, stop_server  # noqa: E402

from oss_serve.tools.mcp_client import McpConnectError, McpToolServer  # noqa: E402


class _SilentServer:
    """Accepts TCP connections and never answers: a hung MCP server."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)

    def close(self) -> None:
        self.listener.close()
        for connection in self.connections:
            connection.close()


class _GarbageHandler(BaseHTTPRequestHandler):
    """Answers every request with a 200 event stream of noise."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b"event: endpoint\ndata: \x00\xff not a url\n\n"
                         b"event: message\ndata: {oops\n\n" + os.urandom(512))
        self.wfile.flush()

    do_POST = do_GET


def test_hung_mcp_server_fails_to_connect_within_its_timeout() -> None:
    silent = _SilentServer()
    started = time.monotonic()
    try:
        with pytest.raises(McpConnectError, match=str(silent.port)):
            asyncio.run(McpToolServer(f"127.0.0.1:{silent.port}", connect_timeout_s=1).start())
    finally:
        silent.close()
    assert time.monotonic() - started < 10


def test_garbage_speaking_mcp_server_fails_to_connect_within_its_timeout() -> None:
    garbage = ThreadingHTTPServer(("127.0.0.1", 0), _GarbageHandler)
    threading.Thread(target=garbage.serve_forever, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(McpConnectError):
            asyncio.run(McpToolServer(f"127.0.0.1:{garbage.server_address[1]}", connect_timeout_s=1).start())
    finally:
        garbage.shutdown()
        garbage.server_close()
    assert time.monotonic() - started < 10


def test_mcp_server_dying_mid_call_ends_the_call_with_an_error(tmp_path: Path) -> None:
    script = tmp_path / "calc_server.py"
    script.write_text(SERVER_SCRIPT)
    port = free_port()

    async def scenario() -> tuple[Any, float]:
        process = start_server(script, port)
        server = McpToolServer(f"127.0.0.1:{port}", connect_timeout_s=2, call_timeout_s=5)
        await server.start()
        try:
            call_task = asyncio.create_task(server.call_tool("calc.slow", '{"seconds": 30}'))
            await asyncio.sleep(0.5)
            stop_server(process)
            started = time.monotonic()
            result = await call_task
            return result, time.monotonic() - started
        finally:
            await server.aclose()
            if process.poll() is None:
                stop_server(process)

    result, waited = asyncio.run(scenario())
    assert result.is_error, result.text
    assert waited < 6  # at most the call timeout, not the 30 s the tool would have slept


# --- search provider failures (Exa 429 / 500 / slow / garbage) ---

class _FlakyExa(ExaDouble):
    """The Exa double, but /search fails the way the path asks: /429, /500, /slow, /garbage."""

    def do_POST(self) -> None:
        mode = self.server.mode  # type: ignore[attr-defined]
        self.rfile.read(int(self.headers["content-length"]))
        if mode == "429":
            self._send(429, json.dumps({"error": "rate limited"}), "application/json", {"retry-after": "30"})
        elif mode == "500":
            self._send(500, "<html>internal error</html>")
        elif mode == "garbage":
            self._send(200, "\x00\x01 certainly not json", "application/json")
        elif mode == "slow":
            time.sleep(10)
            self._send(200, json.dumps({"results": []}), "application/json")
        elif mode == "drip":
            # Headers at once, then one byte every half second: a read timeout alone never fires.
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", "100000")
            self.end_headers()
            try:
                for _ in range(100000):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.5)
            except OSError:
                pass


@pytest.fixture(scope="module")
def flaky_exa() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyExa)
    server.daemon_threads = True
    server.mode = "500"  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("mode, expected", [("429", "HTTP 429"), ("500", "HTTP 500"), ("garbage", "not JSON"),
                                            ("slow", "within 2 seconds"), ("drip", "within 2 seconds")])
def test_search_provider_failures_come_back_as_error_text_within_the_timeout(
        flaky_exa: ThreadingHTTPServer, mode: str, expected: str) -> None:
    flaky_exa.mode = mode  # type: ignore[attr-defined]
    tool = BrowserToolServer(ExaBackend(EXA_KEY, base_url=f"http://127.0.0.1:{flaky_exa.server_address[1]}",
                                        timeout_s=2), timeout_s=2)

    async def search() -> Any:
        session = await tool.open_session()
        return await session.call("browser.search", json.dumps({"query": "otters"}))

    started = time.monotonic()
    result = asyncio.run(search())
    assert time.monotonic() - started < 5, "the search outlived its timeout"
    assert result.is_error and result.text.startswith("Error:") and expected in result.text, result.text


def test_page_that_drips_forever_is_cut_at_the_timeout(flaky_exa: ThreadingHTTPServer) -> None:
    class Dripping(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.3)
            except OSError:
                pass

    site = ThreadingHTTPServer(("127.0.0.1", 0), Dripping)
    site.daemon_threads = True
    threading.Thread(target=site.serve_forever, daemon=True).start()
    tool = BrowserToolServer(ExaBackend(EXA_KEY, base_url="http://127.0.0.1:9"), allow_private=True, timeout_s=2)

    async def open_page() -> Any:
        session = await tool.open_session()
        return await session.call("browser.open", json.dumps({"id": f"http://127.0.0.1:{site.server_address[1]}/"}))

    started = time.monotonic()
    try:
        result = asyncio.run(open_page())
    finally:
        site.shutdown()
        site.server_close()
    assert time.monotonic() - started < 5
    # The fetch gave up at its deadline; open then asks the search provider (down here) for the text.
    assert result.is_error, result.text


# --- browser.open aimed at the server's own network (SSRF) ---

PRIVATE_URLS = [
    "http://127.0.0.1/", "http://127.1/", "http://0.0.0.0/", "http://2130706433/", "http://0x7f000001/",
    "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[0:0:0:0:0:ffff:7f00:1]/",
    "http://10.0.0.1/", "http://172.16.5.4/", "http://192.168.1.1/", "http://100.64.0.1/",
    "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/", "http://[fd00::1]/",
    "http://metadata.google.internal/", "http://localhost/",
    "http://user:pass@127.0.0.1:22/", "https://127.0.0.1:443/",
]


@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_open_refuses_private_and_metadata_addresses(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # metadata.google.internal resolves to 169.254.169.254 inside GCP; make it do so here too.
    real_getaddrinfo = asyncio.BaseEventLoop.getaddrinfo

    async def resolving_metadata(self: Any, host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "metadata.google.internal":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 80))]
        return await real_getaddrinfo(self, host, *args, **kwargs)

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", resolving_metadata)
    session = make_session("http://127.0.0.1:9", allow_private=False)
    result = call(session, "browser.open", id=url)
    assert result.is_error and ("Refusing to open" in result.text
                                or "Could not resolve" in result.text), (url, result.text)


def test_redirects_and_dns_names_into_private_space_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 'public' page (the test site, declared public) that redirects inward, and a DNS name
    that resolves to a private address: both refused before any byte is fetched from there."""
    hits: list[str] = []

    class Redirector(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            hits.append(self.path)
            targets = {"/to-loopback": f"http://127.0.0.2:{self.server.server_address[1]}/secret",
                       "/to-metadata": "http://169.254.169.254/latest/meta-data/",
                       "/to-name": "http://internal.example.test/",
                       "/to-file": "file:///etc/passwd"}
            self.send_response(302)
            self.send_header("location", targets.get(self.path, "/"))
            self.send_header("content-length", "0")
            self.end_headers()

    site = ThreadingHTTPServer(("127.0.0.1", 0), Redirector)
    site.daemon_threads = True
    threading.Thread(target=site.serve_forever, daemon=True).start()
    real_is_public = web_fetch.is_public_address
    monkeypatch.setattr(web_fetch, "is_public_address",
                        lambda address: address == "127.0.0.1" or real_is_public(address))
    real_getaddrinfo = asyncio.BaseEventLoop.getaddrinfo

    async def fake_dns(self: Any, host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "internal.example.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", 80))]
        return await real_getaddrinfo(self, host, *args, **kwargs)

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", fake_dns)
    base = f"http://127.0.0.1:{site.server_address[1]}"
    session = make_session("http://127.0.0.1:9", allow_private=False)
    try:
        results = {path: call(session, "browser.open", id=base + path)
                   for path in ("/to-loopback", "/to-metadata", "/to-name", "/to-file")}
        direct_name = call(session, "browser.open", id="http://internal.example.test/")
    finally:
        site.shutdown()
        site.server_close()
    for path, result in results.items():
        assert result.is_error and ("Refusing to open" in result.text
                                    or "Only http" in result.text), (path, result.text)
    assert "/secret" not in hits  # the inward hop was never fetched
    assert direct_name.is_error and "Refusing to open" in direct_name.text


def test_dns_rebinding_between_check_and_connect_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The name passes the check as a public address, then resolves to loopback when httpx
    connects: the connected peer is checked too, and the internal page never reaches the model."""
    served: list[str] = []

    class Internal(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            served.append(self.path)
            body = b"internal secrets"
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    site = ThreadingHTTPServer(("127.0.0.1", 0), Internal)
    site.daemon_threads = True
    threading.Thread(target=site.serve_forever, daemon=True).start()
    real_addresses_of = web_fetch._addresses_of

    async def checked_as_public(host: str, port: int) -> list[str]:
        return ["93.184.216.34"] if host == "rebind.example.test" else await real_addresses_of(host, port)

    real_getaddrinfo = asyncio.BaseEventLoop.getaddrinfo

    async def connects_to_loopback(self: Any, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("rebind.example.test", b"rebind.example.test"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return await real_getaddrinfo(self, host, port, *args, **kwargs)

    monkeypatch.setattr(web_fetch, "_addresses_of", checked_as_public)
    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", connects_to_loopback)
    session = make_session("http://127.0.0.1:9", allow_private=False)
    try:
        result = call(session, "browser.open", id=f"http://rebind.example.test:{site.server_address[1]}/secret")
    finally:
        site.shutdown()
        site.server_close()
    assert result.is_error and "connected to a private or local address" in result.text, result.text
    assert "internal secrets" not in result.text
