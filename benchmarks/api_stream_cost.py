"""CPU time the API process spends per streamed chunk, against a bare FastAPI stream in the same run.

The API process (HTTP, engine outputs, detokenization, harmony parsing, the openai types, SSE) is one
Python thread: at 10,000 output tokens per second, each microsecond per chunk is 1 % of its core. This
starts the real server on the tiny preset (CPU), streams `--concurrency` requests of `--tokens` tokens
through /v1/completions and /v1/chat/completions, and reads the server process's CPU time from /proc.
The baseline is a FastAPI app streaming the same number of prebuilt chunks, paced like engine steps:
the floor of uvicorn + starlette + the socket writes.

    python benchmarks/api_stream_cost.py [--concurrency 64] [--tokens 256]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # server_process: the tests' server harness

import httpx
from server_process import ServerProcess, free_port

from oss_serve.testing.make_checkpoint import make_checkpoint

BARE_APP = '''
import asyncio
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

app = FastAPI()
CHUNK = (b'data: {"id":"cmpl-0","choices":[{"finish_reason":null,"index":0,"logprobs":null,"text":" word"}],'
         b'"created":0,"model":"m","object":"text_completion"}\\n\\n')


@app.post("/v1/completions")
async def completions(body: dict) -> StreamingResponse:
    async def chunks():
        for _ in range(body["max_tokens"]):
            await asyncio.sleep(0.004)
            yield CHUNK
        yield b"data: [DONE]\\n\\n"
    return StreamingResponse(chunks(), media_type="text/event-stream")
'''


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def stream_all(base_url: str, path: str, concurrency: int, tokens: int) -> int:
    """Chunks received by `concurrency` streams at once."""
    if path == "/v1/chat/completions":
        body = {"messages": [{"role": "user", "content": "Tell me a story."}]}
    else:
        body = {"prompt": "Once upon a time"}
    body.update(max_tokens=tokens, stream=True, ignore_eos=True)

    async def one(client: httpx.AsyncClient) -> int:
        chunks = 0
        async with client.stream("POST", path, json=body) as response:
            async for line in response.aiter_lines():
                chunks += line.startswith("data: ") and line != "data: [DONE]"
        return chunks

    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        return sum(await asyncio.gather(*(one(client) for _ in range(concurrency))))


def cost_per_chunk(pid: int, base_url: str, path: str, concurrency: int, tokens: int) -> float:
    """Microseconds of the process's CPU per chunk (after one small warm-up round)."""
    asyncio.run(stream_all(base_url, path, 4, 8))
    before = cpu_seconds(pid)
    chunks = asyncio.run(stream_all(base_url, path, concurrency, tokens))
    return (cpu_seconds(pid) - before) / chunks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        app_dir = Path(folder) / "bare"
        app_dir.mkdir()
        (app_dir / "bare_app.py").write_text(BARE_APP)
        port = free_port()
        bare = subprocess.Popen([sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port),
                                 "--log-level", "warning"], cwd=app_dir)
        try:
            for _ in range(100):
                try:
                    httpx.get(f"http://127.0.0.1:{port}/docs")
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            floor = cost_per_chunk(bare.pid, f"http://127.0.0.1:{port}", "/v1/completions", args.concurrency,
                                   args.tokens)
        finally:
            bare.terminate()
            bare.wait()
        print(f"bare FastAPI stream: {floor:.1f} us CPU per chunk", flush=True)
        checkpoint = Path(folder) / "tiny"
        make_checkpoint(checkpoint, preset="tiny", seed=0)
        with ServerProcess(checkpoint, ["--device", "cpu", "--max-total-tokens", "65536"]) as server:
            for path in ("/v1/completions", "/v1/chat/completions"):
                cost = cost_per_chunk(server.process.pid, server.base_url, path, args.concurrency, args.tokens)
                print(f"oss-serve {path}: {cost:.1f} us CPU per chunk ({cost / floor:.1f}x the bare stream)",
                      flush=True)


if __name__ == "__main__":
    main()
