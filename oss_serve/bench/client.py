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


def _record_update(output: RequestOutput, update: StreamUpdate, arrival: float, tokens_seen: list[int]) -> bool:
    """Fold one parsed chunk into `output`; `tokens_seen[0]` keeps the server's highest token count.

    False, with `output.error` set, when the chunk reports an error.
    """
    if update.error:
        output.error = update.error
        return False
    if update.output_tokens is not None:
        tokens_seen[0] = max(tokens_seen[0], update.output_tokens)
    if update.is_token_chunk:
        output.token_chunk_times.append(arrival)
    output.generated_text += update.text
    output.end_time = arrival
    return True


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
            elif stream:
                reader = backend.new_reader()
                parser = SSEParser()
                async for line in iter_sse_lines(response.aiter_bytes()):
                    if (event := parser.feed_line(line)) is None:
                        continue
                    if not _record_update(output, reader.read(event), time.perf_counter(), tokens_seen):
                        break
                if not output.error and (last := parser.finish()) is not None:
                    _record_update(output, reader.read(last), time.perf_counter(), tokens_seen)
            else:
                body_bytes = await response.aread()
                arrival = time.perf_counter()
                _record_update(output, backend.read_response(json.loads(body_bytes)), arrival, tokens_seen)
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
