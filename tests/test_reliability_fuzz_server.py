"""The hostile bodies of test_reliability_input.py, sent to a real server on the tiny checkpoint: the
in-process fuzz runs on a scripted engine double, which cannot crash as the real engine can (an
out-of-range token id once killed the engine process). After each body the server must still answer
/health, and its process (and the engine's, which /health checks) must be alive."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from server_process import ServerProcess
from test_reliability_input import hostile_bodies

REPO = Path(__file__).resolve().parents[1]
# A short context bounds the work of bodies that are valid but ask for the most (n = 128, max_tokens 2**63).
SERVER_ARGS = ["--context-length", "64", "--max-total-tokens", "4096", "--response-store", ":memory:"]


@pytest.fixture(scope="module")
def server(tiny_ckpt: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tiny_ckpt, SERVER_ARGS) as process:
        yield process


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=hostile_bodies())
def test_no_body_takes_the_real_server_down(server: ServerProcess, case: tuple[str, bytes, list[str]]) -> None:
    endpoint, body, _ = case
    response = httpx.post(server.base_url + endpoint, content=body, timeout=45,
                          headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 404, 413), (response.status_code, response.text[:500])
    assert httpx.get(server.base_url + "/health", timeout=10).status_code == 200, server.log_tail()
    assert server.process.poll() is None, server.log_tail()


def test_every_malformed_body_of_the_replay_script(tiny_ckpt: Path) -> None:
    """benchmarks/malformed_bodies.py --short on a fresh server: every class of body, /health after each."""
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "malformed_bodies.py"), "--model-path",
                          str(tiny_ckpt), "--short"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert '"server_errors_5xx": 0' in run.stdout and '"no_answer": 0' in run.stdout, run.stdout[-4000:]
