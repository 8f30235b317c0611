"""One benchmark request over HTTP, timed chunk by chunk."""
from __future__ import annotations

import json
import time
from typing import Any

import httpx

from oss_serve.bench.backends import Backend, StreamUpdate, deep_merge
from oss_serve.bench.datasets import BenchRequest
from oss_serve.bench.metrics import RequestOutput
from oss_serve.bench.sse import SSEParser, iter_sse_lines


def _record_update(output: RequestOutput, update: StreamUpdate, arrival: float, tokens_seen: list[int]) -> None:
    """Fold one parsed chunk into `output`; `tokens_seen[0]` keeps the server's highest token count."""
    if update.output_tokens is not None:
        tokens_seen[0] = max(tokens_seen[0], update.output_tokens)
    if update.is_token_chunk:
        output.token_chunk_times.append(arrival)
    output.generated_text += update.text
    output.end_time = arrival


async def send_request(client: httpx.AsyncClient, base_url: str, backend: Backend, request: BenchRequest,
                       model: str, stream: bool, ignore_eos: bool, extra_body: dict[str, Any],
                       headers: dict[str, str]) -> RequestOutput:
    payload = deep_merge(backend.payload(request, model, stream, ignore_eos), extra_body)
    output = RequestOutput(prompt_len=request.prompt_len)
    tokens_seen = [0]
    output.send_time = time.perf_counter()
    try:
        async with client.stream("POST", base_url + backend.path, json=payload, headers=headers) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode("utf-8", "replace")
                output.error = f"HTTP {response.status_code}: {body[:500]}"
                output.end_time = time.perf_counter()
                return output
            if stream:
                reader = backend.new_reader()
                parser = SSEParser()
                async for line in iter_sse_lines(response.aiter_bytes()):
                    event = parser.feed_line(line)
                    if event is None:
                        continue
                    update = reader.read(event)
                    if update.error:
                        output.error = update.error
                        break
                    _record_update(output, update, time.perf_counter(), tokens_seen)
                if (last := parser.finish()) is not None and not output.error:
                    update = reader.read(last)
                    if update.error:
                        output.error = update.error
                    else:
                        _record_update(output, update, time.perf_counter(), tokens_seen)
            else:
                body_bytes = await response.aread()
                arrival = time.perf_counter()
                update = backend.read_response(json.loads(body_bytes))
                if update.error:
                    output.error = update.error
                else:
                    _record_update(output, update, arrival, tokens_seen)
    except Exception as exc:  # connection refused, reset, timeout, bad JSON: a failed request, not a crash
        output.error = f"{type(exc).__name__}: {exc}"
        output.end_time = time.perf_counter()
        return output
    if output.error:
        if not output.end_time:
            output.end_time = time.perf_counter()
        return output
    if not output.token_chunk_times and not output.generated_text and tokens_seen[0] == 0:
        output.error = "the server returned no output"
        return output
    output.success = True
    if tokens_seen[0] > 0:
        output.output_len = tokens_seen[0]
    elif ignore_eos:
        output.output_len = request.output_len
    else:
        output.output_len = -1  # filled in from the retokenized count by the caller
    return output
