"""Start `python -m oss_serve.launch_server` as a child process and wait until it answers `/health`.

Used by the end-to-end tests and by benchmark scripts that bring their own server.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    def __init__(self, model_path: str | Path, extra_args: list[str] | None = None, port: int | None = None,
                 startup_timeout: float = 600.0) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="oss_serve_server_", suffix=".log")[1])
        command = [sys.executable, "-m", "oss_serve.launch_server", "--model-path", str(model_path),
                   "--host", "127.0.0.1", "--port", str(self.port), *(extra_args or [])]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            self._wait_healthy(startup_timeout)
        except BaseException:
            self.stop()
            raise

    def log_text(self) -> str:
        """Everything the server has printed so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, max_chars: int = 4000) -> str:
        return self.log_text()[-max_chars:]

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=5.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(0.5)
        raise TimeoutError(f"server not healthy after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (the server drains, then exits), SIGKILL after `timeout` seconds; the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


_shared_servers: dict[str, ServerProcess] = {}


def shared_server(model_path: str | Path, extra_args: list[str] | None = None) -> ServerProcess:
    """One server per (checkpoint, flags) for the whole test session; `stop_shared_servers` ends them."""
    key = f"{model_path}|{' '.join(extra_args or [])}"
    server = _shared_servers.get(key)
    if server is None or server.process.poll() is not None:
        server = _shared_servers[key] = ServerProcess(model_path, extra_args)
    return server


def stop_shared_servers() -> None:
    while _shared_servers:
        _, server = _shared_servers.popitem()
        server.stop()
