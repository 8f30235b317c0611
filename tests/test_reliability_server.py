"""The real server under load, dropped clients, hostile HTTP and a dying engine (loopback only).

Load and disconnects run benchmarks/soak.py in its short mode (the long runs are the same script
with bigger numbers, see docs/reliability.md); the rest drives one server started here with an
API key, a small body limit and a queue limit.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from oss_serve.engine.messages import EngineStats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from soak import ServerUnderTest, start_server  # noqa: E402

API_KEY = "sk-reliability-" + "7" * 24
MAX_REQUEST_BYTES = 64 * 1024


def test_load_disconnect_and_mixed_soak_short(tiny_ckpt: Path) -> None:
    """150 streams at once against a pool of about 50 with a queue of 20; 60 dropped streams;
    10 s of mixed traffic. The script's own verdicts, plus the figures that matter here."""
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "soak.py"), "--model-path", str(tiny_ckpt),
                          "--scenario", "all", "--short", "--max-queued", "20", "--api-key", API_KEY],
                         capture_output=True, text=True, timeout=240, cwd=REPO)
    summary = json.loads(run.stdout[run.stdout.index("{"):])
    load, disconnect, mixed = summary["results"]
    assert load["completed"] + load["refused_503"] == load["requests"], load
    assert load["refused_503"] > 0 and load["completed"] > 0, load
    assert load["refused_without_retry_after"] == 0 and load["hung"] == 0, load
    assert load["leaked_kv_pages_after"] <= load["leaked_kv_pages_before"], load
    assert load["health_failures"] == 0 and load["health_max_ms"] < 2000, load  # 2 shared cores here
    assert load["rss_within_10_percent"], load  # the HTTP process
    assert load["total_rss_growth_percent"] < 25, load  # with the engine: first-burst allocator growth
    assert disconnect["ok"], disconnect
    assert mixed["server_errors_5xx"] == 0 and mixed["ok"], mixed
    assert summary["server_exit_code"] == 0, run.stderr[-2000:]


@pytest.fixture(scope="module")
def guarded_server(tiny_ckpt: Path) -> Iterator[ServerUnderTest]:
    server = start_server(str(tiny_ckpt), ["--max-total-tokens", "2048", "--context-length", "512",
                                           "--max-request-bytes", str(MAX_REQUEST_BYTES), "--enable-metrics",
                                           "--response-store", ":memory:", "--log-level", "debug",
                                           "--log-requests"], API_KEY)
    yield server
    server.stop()


def _routes() -> list[tuple[str, str]]:
    from oss_serve.api.app import OPEN_ROUTES, build_app
    from oss_serve.api.state import ServingState
    from oss_serve.server_args import ServerArgs

    class NoEngine:
        def stats(self) -> EngineStats:
            return EngineStats()

    app = build_app(ServingState(ServerArgs(model_path="m"), NoEngine(), None, None, 1, "m", 1), None)  # type: ignore[arg-type]
    def flattened(routes: list) -> list:
        # Included routers appear as one entry wrapping their own routes (newer FastAPI).
        return [leaf for route in routes
                for leaf in (flattened(route.original_router.routes) if hasattr(route, "original_router") else [route])]

    routes = []
    for route in flattened(app.routes):
        for method in sorted(getattr(route, "methods", None) or []):
            if route.path not in OPEN_ROUTES and method != "HEAD":
                routes.append((method, route.path.replace("{response_id}", "resp_x")))
    return routes


def test_every_route_but_health_needs_the_key(guarded_server: ServerUnderTest) -> None:
    routes = _routes() + [("GET", "/metrics"), ("GET", "/no/such/route")]
    assert len(routes) >= 15
    wrong_keys = [None, "Bearer", "Bearer x", f"Bearer {API_KEY[:-1]}", f"Bearer {API_KEY}x", f"bearer {API_KEY}",
                  API_KEY, f"Bearer {API_KEY.upper()}", f"Basic {API_KEY}"]
    with httpx.Client(base_url=guarded_server.base_url, timeout=30) as client:
        assert client.get("/health").status_code == 200
        for method, path in routes:
            for key in wrong_keys:
                headers = {"Authorization": key} if key is not None else {}
                response = client.request(method, path, headers=headers, json={})
                assert response.status_code == 401, (method, path, key, response.status_code)
                assert response.json()["error"]["type"] == "authentication_error"
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200


def test_the_key_is_never_shown(guarded_server: ServerUnderTest) -> None:
    with httpx.Client(base_url=guarded_server.base_url, headers={"Authorization": f"Bearer {API_KEY}"},
                      timeout=60) as client:
        info = client.get("/get_server_info").text
        client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
        client.post("/v1/completions", json={"prompt": 5})  # a 400 logs its error
        metrics = client.get("/metrics").text
    time.sleep(0.5)
    assert API_KEY not in info and API_KEY not in metrics
    assert API_KEY not in guarded_server.log_text()  # debug logging, access log on


def test_one_access_line_per_request_and_a_warning_with_the_reason(guarded_server: ServerUnderTest) -> None:
    marker = "access-log-marker-7731"
    with httpx.Client(base_url=guarded_server.base_url, headers={"Authorization": f"Bearer {API_KEY}"},
                      timeout=60) as client:
        ok = client.post("/v1/completions", json={"prompt": marker, "max_tokens": 2}).json()
        refused = client.post("/v1/completions", json={"prompt": [10 ** 6], "user": marker})
        streamed = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": marker}],
                                                              "max_tokens": 3, "stream": True})
    unauthorized = httpx.post(guarded_server.base_url + "/v1/completions", json={"prompt": marker})
    assert refused.status_code == 400 and unauthorized.status_code == 401 and streamed.status_code == 200
    time.sleep(0.5)
    access = [line for line in guarded_server.log_text().splitlines() if "oss_serve.access" in line]
    lines = [line for line in access if "request body" not in line and "response body" not in line]
    [ok_line] = [line for line in lines if f"id={ok['id']}" in line]
    assert " INFO " in ok_line and "POST /v1/completions 200" in ok_line, ok_line
    assert f"prompt_tokens={ok['usage']['prompt_tokens']} output_tokens=2 cached_tokens=" in ok_line, ok_line
    assert "ttft_ms=" in ok_line and "ttft_ms=-" not in ok_line and "total_ms=" in ok_line, ok_line
    [refused_line] = [line for line in lines if "POST /v1/completions 400" in line and "10000" in line]
    assert " WARNING " in refused_line and "token ids must be integers" in refused_line, refused_line
    assert any("POST /v1/chat/completions 200 id=chatcmpl-" in line and "output_tokens=3" in line for line in lines)
    assert any(" WARNING " in line and "401" in line and "API key" in line for line in lines), lines[-5:]
    # The access lines never hold a body; --log-requests adds the bodies on lines of their own.
    assert not any(marker in line for line in lines)
    assert sum(marker in line for line in access if "request body" in line) == 3


def test_key_comparison_is_constant_time() -> None:
    import inspect

    from oss_serve.api import app

    source = inspect.getsource(app.GuardMiddleware)
    assert "hmac.compare_digest" in source and "== self.expected" not in source


def test_oversized_bodies_get_413(guarded_server: ServerUnderTest) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
    big = json.dumps({"prompt": "x" * (MAX_REQUEST_BYTES + 10), "max_tokens": 1}).encode()

    def chunked():
        for start in range(0, len(big), 4096):
            yield big[start:start + 4096]

    with httpx.Client(base_url=guarded_server.base_url, timeout=60) as client:
        declared = client.post("/v1/completions", content=big, headers=headers)
        streamed = client.post("/v1/chat/completions", content=chunked(), headers=headers)  # no Content-Length
        fine = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1}, headers=headers)
    assert declared.status_code == 413 and "limit" in declared.json()["error"]["message"]
    assert streamed.status_code == 413, streamed.text
    assert fine.status_code == 200


def _engine_pid(server: ServerUnderTest) -> int:
    from soak import _descendants

    for pid in _descendants(server.process.pid):  # type: ignore[union-attr]
        if "engine_process" in Path(f"/proc/{pid}/cmdline").read_text():
            return pid
    raise AssertionError("no engine process found")


def test_engine_killed_mid_request_gives_503_then_the_server_exits_nonzero(tiny_ckpt: Path) -> None:
    server = start_server(str(tiny_ckpt), ["--max-total-tokens", "2048", "--context-length", "512",
                                           "--response-store", ":memory:"], None)
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client, \
                httpx.Client(base_url=server.base_url, timeout=60) as streaming_client:
            body = {"prompt": "Count", "max_tokens": 400, "ignore_eos": True, "stream": True}
            with streaming_client.stream("POST", "/v1/completions", json=body) as stream:
                lines = stream.iter_lines()
                assert next(line for line in lines if line.startswith("data:"))
                os.kill(_engine_pid(server), signal.SIGKILL)
                rest = [line for line in lines if line.startswith("data:")]
            errors = [json.loads(line[6:])["error"] for line in rest if line != "data: [DONE]" and "error" in line]
            assert errors and "engine" in errors[0]["message"] and errors[0]["code"] == 503, rest[-3:]
            assert rest[-1] == "data: [DONE]"
            health = client.get("/health")
            new = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
            assert health.status_code == 503
            assert new.status_code == 503 and "engine" in new.json()["error"]["message"], new.text
        assert server.process.wait(timeout=60) == 1  # type: ignore[union-attr]
        assert "engine process is gone" in server.log_text()
    finally:
        if server.process.poll() is None:  # type: ignore[union-attr]
            server.process.kill()  # type: ignore[union-attr]
