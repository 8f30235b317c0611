"""Load, disconnect and soak runs against a real oss-serve server on loopback, with a verdict.

    # starts its own server on the checkpoint (tiny random-weight models are fine):
    python benchmarks/soak.py --model-path CKPT --scenario load --requests 1000 --max-queued 200
    python benchmarks/soak.py --model-path CKPT --scenario disconnect --requests 500
    python benchmarks/soak.py --model-path CKPT --scenario mixed --duration 300
    python benchmarks/soak.py --model-path CKPT --scenario all --short   # what the tests run
    # or against a server that is already running (no memory figures then):
    python benchmarks/soak.py --base-url http://127.0.0.1:30000 --scenario load

Scenarios
- load: N streaming completions at once (ignore_eos, exact length). Each must finish with exactly
  that many tokens or be refused with 503 + Retry-After; none may hang. /health is timed
  throughout; server memory (server + engine RSS) is compared before and after.
- disconnect: N streams dropped at random points (before the first byte, mid-stream). The KV
  pool must come back to its starting level (pages held by cached prefixes are not counted).
- mixed: completions, chat, responses (stored, background + cancel, streamed and dropped) for a
  duration: no 5xx, no leaked KV pages, no leaked child processes (tool sandboxes).

Prints one JSON object (figures and `ok`), exits 1 when a check fails.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # server_process: the tests' server harness

import httpx
from server_process import ServerProcess

PROMPT = "Count slowly and carefully: one two three four"


# --- the server under test -------------------------------------------------------------------

@dataclass
class ServerUnderTest:
    base_url: str
    headers: dict[str, str]
    launched: ServerProcess | None = None  # None: a server someone else runs

    @property
    def process(self) -> subprocess.Popen | None:
        return self.launched.process if self.launched is not None else None

    def log_text(self) -> str:
        return self.launched.log_text() if self.launched is not None else ""

    def pids(self) -> list[int]:
        """The server and every process below it (engine, tool sandboxes)."""
        if self.process is None:
            return []
        return [self.process.pid, *_descendants(self.process.pid)]

    def rss_kib(self) -> int:
        return sum(_rss_kib(pid) for pid in self.pids())

    def http_process_rss_kib(self) -> int:
        return _rss_kib(self.process.pid) if self.process is not None else 0

    def stop(self) -> int | None:
        return self.launched.stop(timeout=60) if self.launched is not None else None


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                pending.append(child)
    return found


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def start_server(model_path: str, extra_args: list[str], api_key: str | None,
                 timeout_s: float = 300) -> ServerUnderTest:
    launched = ServerProcess(model_path, ["--device", "cpu", *extra_args, *(["--api-key", api_key] if api_key else [])],
                             startup_timeout=timeout_s)
    return ServerUnderTest(launched.base_url, {"Authorization": f"Bearer {api_key}"} if api_key else {}, launched)


# --- helpers ---------------------------------------------------------------------------------

async def engine_stats(client: httpx.AsyncClient) -> dict[str, Any]:
    return (await client.get("/get_server_info")).json()["engine"]


async def leaked_kv_pages(client: httpx.AsyncClient, timeout_s: float = 60) -> int:
    """Full-attention KV pages in use by no request and no prefix-cache entry, once nothing runs.
    (Each cache entry holds one full page; with nothing running, every used page is one of
    those, so the cache can stay warm.)"""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = await engine_stats(client)
        idle = (stats.get("num_running", 0) == 0 and stats.get("num_waiting", 0) == 0
                and stats.get("num_streams", 0) == 0)
        if idle or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.5)  # the engine reports stats once per idle second; take a fresh set
    stats = await engine_stats(client)
    return int(stats["full_pages_used"]) - int(stats.get("cached_pages", 0))


class HealthProbe:
    """Times /health every `interval_s` while a scenario runs, from a thread of its own: probing
    from the load's event loop would time that loop's backlog, not the server."""

    def __init__(self, base_url: str, interval_s: float = 0.05) -> None:
        self.base_url = base_url
        self.interval_s = interval_s
        self.latencies_ms: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    status = client.get("/health").status_code
                except httpx.HTTPError:
                    status = 0
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
                self.failures += status != 200
                self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> dict[str, Any]:
        self._stop.set()
        await asyncio.to_thread(self._thread.join)
        values = sorted(self.latencies_ms) or [0.0]
        return {"health_probes": len(self.latencies_ms), "health_failures": self.failures,
                "health_p50_ms": round(statistics.median(values), 2),
                "health_p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 2),
                "health_max_ms": round(values[-1], 2)}


def _client(server: ServerUnderTest, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.base_url, headers=server.headers, timeout=httpx.Timeout(None),
                             limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))


# --- scenarios -------------------------------------------------------------------------------

async def streamed_completion(client: httpx.AsyncClient, max_tokens: int, hang_after_s: float) -> dict[str, Any]:
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    started = time.monotonic()
    try:
        async with asyncio.timeout(hang_after_s):
            async with client.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    return {"status": response.status_code, "retry_after": response.headers.get("retry-after"),
                            "seconds": time.monotonic() - started}
                tokens = None
                error = None
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[len("data: "):])
                    if "error" in chunk:
                        error = chunk["error"]
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                return {"status": 200, "tokens": tokens, "error": error, "seconds": time.monotonic() - started}
    except TimeoutError:
        return {"status": "hung", "seconds": time.monotonic() - started}
    except httpx.HTTPError as error:
        return {"status": f"transport error: {type(error).__name__}", "seconds": time.monotonic() - started}


async def load_scenario(server: ServerUnderTest, requests: int, max_tokens: int, hang_after_s: float) -> dict[str, Any]:
    async with _client(server, requests + 8) as client:
        rss_before = server.rss_kib()
        http_rss_before = server.http_process_rss_kib()
        pages_before = await leaked_kv_pages(client)
        probe = HealthProbe(server.base_url)
        probe.start()
        started = time.monotonic()
        results = await asyncio.gather(*(streamed_completion(client, max_tokens, hang_after_s)
                                         for _ in range(requests)))
        duration = time.monotonic() - started
        health = await probe.stop()
        pages_after = await leaked_kv_pages(client)
        rss_after = server.rss_kib()
        http_rss_after = server.http_process_rss_kib()
    completed = [r for r in results if r["status"] == 200 and r.get("tokens") == max_tokens and not r.get("error")]
    refused = [r for r in results if r["status"] == 503]
    refused_with_retry_after = [r for r in refused if r.get("retry_after")]
    other = [r for r in results if r not in completed and r not in refused]
    figures: dict[str, Any] = {
        "scenario": "load", "requests": requests, "max_tokens": max_tokens, "completed": len(completed),
        "refused_503": len(refused), "refused_without_retry_after": len(refused) - len(refused_with_retry_after),
        "hung": sum(r["status"] == "hung" for r in results), "other": len(other),
        "other_examples": [str(r)[:200] for r in other[:3]], "duration_s": round(duration, 2),
        "completed_tokens_per_s": round(len(completed) * max_tokens / duration, 1),
        "leaked_kv_pages_before": pages_before, "leaked_kv_pages_after": pages_after,
        "rss_before_mib": round(rss_before / 1024, 1), "rss_after_mib": round(rss_after / 1024, 1),
        "http_process_rss_before_mib": round(http_rss_before / 1024, 1),
        "http_process_rss_after_mib": round(http_rss_after / 1024, 1),
        **health,
    }
    # The HTTP process is judged: it holds every connection and stream. The engine process's
    # figure (total minus HTTP) is reported; its allocator keeps some memory after a first burst.
    rss_ok = http_rss_before == 0 or http_rss_after <= http_rss_before * 1.10
    figures["total_rss_growth_percent"] = round(100 * (rss_after - rss_before) / max(1, rss_before), 1)
    figures["ok"] = (not other and figures["refused_without_retry_after"] == 0 and pages_after <= pages_before
                     and rss_ok and health["health_failures"] == 0)
    figures["rss_within_10_percent"] = rss_ok
    figures["health_under_100_ms"] = health["health_max_ms"] < 100
    return figures


async def _dropped_stream(client: httpx.AsyncClient, rng: random.Random) -> str:
    """Opens a stream and leaves at a random point; returns where it left."""
    max_tokens = rng.randint(8, 200)
    path, body = rng.choice([
        ("/v1/completions", {"prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}),
        ("/generate", {"text": PROMPT, "stream": True,
                       "sampling_params": {"max_new_tokens": max_tokens, "ignore_eos": True}}),
    ])
    chunks_to_read = rng.choice([0, 0, 1, 2, 5, 20])
    try:
        async with asyncio.timeout(rng.uniform(0.01, 3.0)):
            async with client.stream("POST", path, json=body) as response:
                read = 0
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        read += 1
                        if read >= chunks_to_read:
                            return f"after {read} chunks"
        return "finished"
    except TimeoutError:
        return "timed out"
    except httpx.HTTPError:
        return "transport error"


async def disconnect_scenario(server: ServerUnderTest, requests: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers, timeout=60) as control:
        pages_before = await leaked_kv_pages(control)
        started = time.monotonic()

        async def one() -> str:
            # A client of its own per request, closed on leaving: the connection really goes away.
            async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers, timeout=60) as client:
                return await _dropped_stream(client, rng)

        outcomes = await asyncio.gather(*(one() for _ in range(requests)))
        pages_after = await leaked_kv_pages(control)
        stats = await engine_stats(control)
    kinds: dict[str, int] = {}
    for outcome in outcomes:
        kind = outcome.split(" after")[0] if outcome.startswith("after") else outcome
        kinds[re.sub(r"\d+", "N", kind)] = kinds.get(re.sub(r"\d+", "N", kind), 0) + 1
    return {"scenario": "disconnect", "requests": requests, "outcomes": kinds,
            "duration_s": round(time.monotonic() - started, 2), "leaked_kv_pages_before": pages_before,
            "leaked_kv_pages_after": pages_after, "streams_left": stats.get("num_streams", 0),
            "ok": pages_after <= pages_before and stats.get("num_streams", 0) == 0}


async def _mixed_request(client: httpx.AsyncClient, rng: random.Random) -> tuple[str, int]:
    kind = rng.choice(["completion", "completion_stream", "chat", "chat_stream", "responses", "responses_tools",
                       "responses_background_cancel", "responses_stream_drop", "generate", "disconnect"])
    max_tokens = rng.randint(4, 40)
    weather = {"type": "function", "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    try:
        if kind == "completion":
            status = (await client.post("/v1/completions",
                                        json={"prompt": PROMPT, "max_tokens": max_tokens})).status_code
        elif kind == "completion_stream":
            async with client.stream("POST", "/v1/completions", json={"prompt": PROMPT, "max_tokens": max_tokens,
                                                                      "stream": True}) as response:
                status = response.status_code
                await response.aread()
        elif kind in ("chat", "chat_stream"):
            body = {"messages": [{"role": "user", "content": "Hi there, what is 2+2?"}], "max_tokens": max_tokens,
                    "stream": kind == "chat_stream"}
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                status = response.status_code
                await response.aread()
        elif kind in ("responses", "responses_tools"):
            body: dict[str, Any] = {"input": "What is the weather in Paris?", "max_output_tokens": max_tokens,
                                    "store": rng.random() < 0.5}
            if kind == "responses_tools":
                body["tools"] = [weather]
            status = (await client.post("/v1/responses", json=body)).status_code
        elif kind == "responses_background_cancel":
            created = await client.post("/v1/responses", json={"input": "Tell a long story.", "background": True,
                                                                "max_output_tokens": 200})
            status = created.status_code
            if status == 200:
                await asyncio.sleep(rng.uniform(0, 0.5))
                status = max(status, (await client.post(f"/v1/responses/{created.json()['id']}/cancel")).status_code)
        elif kind == "responses_stream_drop":
            async with client.stream("POST", "/v1/responses", json={"input": "Tell a story.", "stream": True,
                                                                     "max_output_tokens": 100}) as response:
                status = response.status_code
                async for _ in response.aiter_lines():
                    break
        elif kind == "generate":
            status = (await client.post("/generate", json={"text": PROMPT, "sampling_params": {
                "max_new_tokens": max_tokens}})).status_code
        else:
            status = 200 if await _dropped_stream(client, rng) else 0
    except httpx.HTTPError as error:
        return kind, -1 if not isinstance(error, httpx.TimeoutException) else -2
    return kind, status


async def mixed_scenario(server: ServerUnderTest, duration_s: float, concurrency: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    async with _client(server, concurrency + 8) as client:
        pages_before = await leaked_kv_pages(client)
        children_before = len(server.pids())
        rss_before = server.rss_kib()
        probe = HealthProbe(server.base_url, interval_s=0.2)
        probe.start()
        deadline = time.monotonic() + duration_s
        statuses: dict[str, dict[str, int]] = {}

        async def worker() -> None:
            while time.monotonic() < deadline:
                kind, status = await _mixed_request(client, rng)
                per_kind = statuses.setdefault(kind, {})
                per_kind[str(status)] = per_kind.get(str(status), 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        health = await probe.stop()
        pages_after = await leaked_kv_pages(client)
        await asyncio.sleep(1)  # tool sessions close as their responses end
        children_after = len(server.pids())
        rss_after = server.rss_kib()
    server_errors = sum(count for per_kind in statuses.values() for status, count in per_kind.items()
                        if status.startswith("5") or status in ("-1", "-2"))
    total = sum(count for per_kind in statuses.values() for count in per_kind.values())
    return {"scenario": "mixed", "duration_s": duration_s, "concurrency": concurrency, "requests": total,
            "statuses": statuses, "server_errors_5xx": server_errors, "leaked_kv_pages_before": pages_before,
            "leaked_kv_pages_after": pages_after, "processes_before": children_before,
            "processes_after": children_after, "rss_before_mib": round(rss_before / 1024, 1),
            "rss_after_mib": round(rss_after / 1024, 1), **health,
            "ok": server_errors == 0 and pages_after <= pages_before and children_after <= children_before}


# --- entry point -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model-path", help="Start a server on this checkpoint (CPU).")
    target.add_argument("--base-url", help="Use a running server instead.")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--scenario", choices=("load", "disconnect", "mixed", "all"), default="all")
    parser.add_argument("--short", action="store_true", help="Small sizes that finish in well under a minute.")
    parser.add_argument("--requests", type=int, default=None, help="load: 1000; disconnect: 500 (short: 150 / 60).")
    parser.add_argument("--max-tokens", type=int, default=16, help="Tokens per load request.")
    parser.add_argument("--max-total-tokens", type=int, default=2048,
                        help="KV pool of the started server: 2048 tokens hold about 50 load requests.")
    parser.add_argument("--max-queued", type=int, default=100, help="--max-queued-requests of the started server.")
    parser.add_argument("--duration", type=float, default=None, help="mixed: seconds (300; short: 10).")
    parser.add_argument("--concurrency", type=int, default=16, help="mixed: clients at once.")
    parser.add_argument("--hang-after", type=float, default=None, help="A load request this old counts as hung.")
    parser.add_argument("--rounds", type=int, default=1,
                        help="load: repeat the burst; memory that grows on every round is a leak, "
                             "growth on the first only is warm-up.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-arg", action="append", default=[], help="Extra flag for the started server.")
    return parser


async def run(args: argparse.Namespace, server: ServerUnderTest) -> list[dict[str, Any]]:
    results = []
    scenarios = ["load", "disconnect", "mixed"] if args.scenario == "all" else [args.scenario]
    for scenario in scenarios:
        if scenario == "load":
            requests = args.requests or (150 if args.short else 1000)
            hang_after = args.hang_after or (120 if args.short else 600)
            for _ in range(args.rounds):
                results.append(await load_scenario(server, requests, args.max_tokens, hang_after))
        elif scenario == "disconnect":
            results.append(await disconnect_scenario(server, args.requests or (60 if args.short else 500), args.seed))
        else:
            duration = args.duration or (10 if args.short else 300)
            results.append(await mixed_scenario(server, duration, args.concurrency, args.seed))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.model_path:
        extra = ["--max-total-tokens", str(args.max_total_tokens), "--max-queued-requests", str(args.max_queued),
                 "--context-length", "512", "--response-store", ":memory:", *args.server_arg]
        server = start_server(args.model_path, extra, args.api_key)
    else:
        server = ServerUnderTest(args.base_url, {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {})
    try:
        results = asyncio.run(run(args, server))
    finally:
        exit_code = server.stop()
    summary = {"ok": all(r["ok"] for r in results) and exit_code in (0, None), "server_exit_code": exit_code,
               "results": results}
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
