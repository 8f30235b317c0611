"""The python tool runs real code on every backend this machine has, and contains hostile code."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from oss_serve.tools.python_backends import (
    DockerBackend,
    PythonBackend,
    ResourceLimits,
    SandboxBackend,
    UvBackend,
    choose_python_backend,
)
from oss_serve.tools.python_tool import PythonToolServer

# A locally imported image (see REFERENCE section 4: debootstrap + docker import) or the stock one.
TEST_IMAGES = [os.environ.get("PYTHON_DOCKER_IMAGE"), "oss-serve-python:bookworm", "python:3.11"]


def _docker_backend() -> PythonBackend:
    reasons = []
    for image in filter(None, TEST_IMAGES):
        reason = DockerBackend.unavailable_reason(image)
        if reason is None:
            return DockerBackend(image, ResourceLimits(memory_bytes=512 << 20))
        reasons.append(reason)
    pytest.skip("docker backend not testable here: " + "; ".join(dict.fromkeys(reasons)) +
                " (start dockerd and `docker import` a debootstrap rootfs as oss-serve-python:bookworm)")


def _sandbox_backend() -> PythonBackend:
    reason = SandboxBackend.unavailable_reason()
    if reason:
        pytest.skip(f"sandbox backend not testable here: {reason}")
    return SandboxBackend(ResourceLimits(memory_bytes=512 << 20))


def _uv_backend() -> PythonBackend:
    reason = UvBackend.unavailable_reason()
    if reason:
        pytest.skip(f"uv backend not testable here: {reason}")
    return UvBackend()


BACKEND_FACTORIES = {"docker": _docker_backend, "sandbox": _sandbox_backend, "uv": _uv_backend}


@pytest.fixture(params=["docker", "sandbox", "uv"])
def any_backend(request: pytest.FixtureRequest) -> PythonBackend:
    return BACKEND_FACTORIES[request.param]()


@pytest.fixture(params=["docker", "sandbox"])
def isolating_backend(request: pytest.FixtureRequest) -> PythonBackend:
    return BACKEND_FACTORIES[request.param]()


async def run_code(backend: PythonBackend, *cells: str, stateful: bool = False, timeout_s: float = 10.0) -> list:
    tool = PythonToolServer(backend, timeout_s=timeout_s, stateful=stateful)
    session = await tool.open_session()
    try:
        return [await session.call("python", cell) for cell in cells]
    finally:
        await session.close()


def test_runs_code_and_shows_stdout_stderr_and_final_expression(any_backend: PythonBackend) -> None:
    code = "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\n6 * 7"
    [result] = asyncio.run(run_code(any_backend, code))
    assert result.text == "to stdout\nto stderr\n42"
    assert not result.is_error
    assert result.recipient == "python"
    assert result.details.code.endswith("6 * 7")


def test_exception_comes_back_as_a_traceback(any_backend: PythonBackend) -> None:
    [result] = asyncio.run(run_code(any_backend, "def f():\n    return 1 / 0\nf()"))
    assert "ZeroDivisionError: division by zero" in result.text
    assert "return 1 / 0" in result.text  # the failing line is quoted
    assert "oss_serve" not in result.text  # no driver internals


def test_json_wrapped_code_is_accepted(any_backend: PythonBackend) -> None:
    [result] = asyncio.run(run_code(any_backend, '{"code": "print(6*7)"}'))
    assert result.text == "42"


def test_stateless_mode_forgets_between_calls(any_backend: PythonBackend) -> None:
    first, second = asyncio.run(run_code(any_backend, "x = 5\nprint(x)", "print(x)"))
    assert first.text == "5"
    assert "NameError" in second.text


def test_stateful_mode_keeps_variables_until_a_timeout_restarts_it(any_backend: PythonBackend) -> None:
    results = asyncio.run(run_code(any_backend, "x = 5", "x * 2", "while True: pass", "x",
                                   stateful=True, timeout_s=2))
    assert results[1].text == "10"
    assert "timed out after 2 seconds" in results[2].text and "restarted" in results[2].text
    assert "NameError" in results[3].text


def test_infinite_loop_times_out(any_backend: PythonBackend) -> None:
    started = time.monotonic()
    [result] = asyncio.run(run_code(any_backend, "print('started', flush=True)\nwhile True:\n    pass", timeout_s=2))
    assert time.monotonic() - started < 10
    assert result.is_error and result.details.timed_out
    assert result.text.startswith("started")
    assert "timed out after 2 seconds" in result.text


def test_huge_output_is_truncated_keeping_head_and_tail(any_backend: PythonBackend) -> None:
    code = "print('FIRST')\nfor i in range(400000):\n    print('x' * 50)\nprint('LAST')"
    [result] = asyncio.run(run_code(any_backend, code))
    assert result.text.startswith("FIRST")
    assert result.text.endswith("LAST")
    assert "bytes of output truncated" in result.text
    assert len(result.text) < 20_000


def test_crash_of_the_interpreter_is_reported(any_backend: PythonBackend) -> None:
    [result] = asyncio.run(run_code(any_backend, "import os\nprint('bye', flush=True)\nos._exit(3)"))
    assert result.is_error
    assert "bye" in result.text and "exited with code" in result.text


# --- isolation: sandbox and docker only ---

def test_no_network_beyond_an_empty_loopback(isolating_backend: PythonBackend) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    code = (f"import socket\nprint(sorted(name for _, name in socket.if_nameindex()))\n"
            f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('reached host')\n"
            f"except OSError as error:\n    print('blocked', type(error).__name__)")
    try:
        [result] = asyncio.run(run_code(isolating_backend, code))
    finally:
        listener.close()
    assert result.text.splitlines()[0] == "['lo']"
    assert "blocked" in result.text and "reached host" not in result.text


def test_writing_outside_tmp_fails(isolating_backend: PythonBackend) -> None:
    code = ("for path in ['/evil', '/usr/evil', '/etc/evil', '/tmp/fine']:\n"
            "    try:\n        open(path, 'w').write('x')\n        print(path, 'written')\n"
            "    except OSError as error:\n        print(path, 'refused')")
    [result] = asyncio.run(run_code(isolating_backend, code))
    assert result.text.splitlines() == ["/evil refused", "/usr/evil refused", "/etc/evil refused", "/tmp/fine written"]


def test_server_files_and_home_are_not_readable(isolating_backend: PythonBackend) -> None:
    server_file = Path(__file__).resolve()
    home = Path.home()
    code = (f"import os\nfor path in [{str(server_file)!r}, {str(home)!r}, '/etc/shadow', '/etc/passwd']:\n"
            "    try:\n        os.listdir(path) if os.path.isdir(path) else open(path).read()\n"
            "        print(path, 'readable')\n"
            "    except OSError:\n        print(path, 'hidden')")
    [result] = asyncio.run(run_code(isolating_backend, code))
    lines = result.text.splitlines()
    assert lines[0] == f"{server_file} hidden"
    assert lines[1] == f"{home} hidden"
    assert lines[2] == "/etc/shadow hidden"


def test_memory_bomb_is_contained(isolating_backend: PythonBackend) -> None:
    # 2 GiB of written bytes against a 512 MiB limit: MemoryError or the OOM killer, never the host.
    bomb, after = asyncio.run(run_code(isolating_backend, "x = b'x' * (2 * 2**30)\nprint('allocated')",
                                       "print('alive')"))
    assert "allocated" not in bomb.text
    assert "MemoryError" in bomb.text or "exited with code" in bomb.text
    assert after.text == "alive"


def test_fork_bomb_is_contained(isolating_backend: PythonBackend) -> None:
    code = ("import os, time\nforked = 0\ntry:\n    for _ in range(5000):\n        if os.fork() == 0:\n"
            "            time.sleep(60)\n            os._exit(0)\n        forked += 1\n"
            "except OSError as error:\n    print('fork refused after', forked)")
    started = time.monotonic()
    bomb, after = asyncio.run(run_code(isolating_backend, code, "print('alive')", timeout_s=15))
    assert time.monotonic() - started < 30
    assert "fork refused after" in bomb.text, bomb.text
    assert int(bomb.text.split()[-1]) <= 64
    assert after.text == "alive"
    # The sleeping children died with their sandbox.
    leftovers = subprocess.run(["pgrep", "-u", "65534", "-f", "time.sleep"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""


# --- description and backend choice ---

def test_description_matches_the_mode_and_timeout() -> None:
    backend = SandboxBackend()
    stateless = PythonToolServer(backend, timeout_s=30).namespaces()[0]
    stateful = PythonToolServer(backend, timeout_s=45.5, stateful=True).namespaces()[0]
    assert stateless.name == "python" and stateless.tools == []
    assert "stateless" in stateless.description and "time out after 30 seconds" in stateless.description
    assert "stateful Jupyter notebook" not in stateless.description
    assert "stateful Jupyter notebook" in stateful.description and "45.5 seconds" in stateful.description
    assert "Internet access for this session is disabled" in stateless.description
    assert "Internet access for this session is available" in PythonToolServer(UvBackend()).description()


def test_backend_choice(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("PYTHON_EXECUTION_BACKEND", raising=False)
    monkeypatch.delenv("PYTHON_DOCKER_IMAGE", raising=False)
    monkeypatch.setattr(UvBackend, "unavailable_reason", staticmethod(lambda: None))
    with caplog.at_level(logging.WARNING):
        assert isinstance(choose_python_backend("dangerously_use_uv"), UvBackend)
    assert "DIRECTLY ON THIS HOST" in caplog.text
    monkeypatch.setenv("PYTHON_EXECUTION_BACKEND", "UV")
    assert isinstance(choose_python_backend(None), UvBackend)
    with pytest.raises(ValueError, match="unknown python backend"):
        choose_python_backend("jython")

    monkeypatch.delenv("PYTHON_EXECUTION_BACKEND")
    monkeypatch.setattr(DockerBackend, "unavailable_reason", staticmethod(lambda image=None: "no daemon"))
    monkeypatch.setattr(SandboxBackend, "unavailable_reason", staticmethod(lambda: None))
    assert isinstance(choose_python_backend(None), SandboxBackend)
    monkeypatch.setattr(SandboxBackend, "unavailable_reason", staticmethod(lambda: "no bwrap"))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert choose_python_backend(None) is None
    assert "python tool disabled" in caplog.text and "bubblewrap" in caplog.text and "Docker" in caplog.text
    with pytest.raises(ValueError, match="docker"):
        choose_python_backend("docker")
    monkeypatch.setattr(DockerBackend, "unavailable_reason", staticmethod(
        lambda image=None: None if image == "python:3.11" else f"the Docker image {image!r} is not present locally"))
    assert isinstance(choose_python_backend(None), DockerBackend)
    with pytest.raises(ValueError, match="not present locally"):
        choose_python_backend("docker", docker_image="missing:1")
