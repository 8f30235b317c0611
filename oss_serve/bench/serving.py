"""`python -m oss_serve.bench_serving`: load-test any OpenAI-compatible or native server.

Flag names, metric definitions and the printed block follow the benchmark clients people already
run against SGLang and vLLM, so numbers can be compared across engines.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from collections.abc import Awaitable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
from tqdm.asyncio import tqdm

from oss_serve import env
from oss_serve.bench.arrivals import arrival_offsets
from oss_serve.bench.backends import BACKEND_NAMES, Backend, get_backend
from oss_serve.bench.client import send_request
from oss_serve.bench.datasets import (
    DATASET_NAMES,
    BenchRequest,
    generated_shared_prefix_dataset,
    random_dataset,
    random_ids_dataset,
    sharegpt_dataset,
)
from oss_serve.bench.metrics import BenchmarkMetrics, RequestOutput, compute_metrics
from oss_serve.bench.report import append_jsonl, format_result_block
from oss_serve.bench.tokenizer import BenchTokenizer, load_tokenizer

WARMUP_OUTPUT_LEN = 16


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m oss_serve.bench_serving", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backend", default="oss-serve", choices=BACKEND_NAMES)
    parser.add_argument("--base-url", default=None, help="Server URL; overrides --host/--port.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--model", default=None, help="Model name sent in requests (default: the server's first).")
    parser.add_argument("--tokenizer", default=None, help="Tokenizer folder, file or hub id (default: --model).")
    parser.add_argument("--dataset-name", default="random", choices=DATASET_NAMES)
    parser.add_argument("--dataset-path", default=None, help="ShareGPT JSON file for --dataset-name sharegpt.")
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--random-input-len", type=int, default=1024)
    parser.add_argument("--random-output-len", type=int, default=1024)
    parser.add_argument("--random-range-ratio", type=float, default=0.0,
                        help="Lengths are drawn uniformly from [max(len * ratio, 1), len].")
    parser.add_argument("--sharegpt-output-len", type=int, default=None,
                        help="Ask every ShareGPT request for this many tokens instead of the reply's length.")
    parser.add_argument("--sharegpt-context-len", type=int, default=None,
                        help="Drop ShareGPT pairs longer than this (default: the usual 1024/2048 filter).")
    parser.add_argument("--gsp-num-groups", type=int, default=64)
    parser.add_argument("--gsp-prompts-per-group", type=int, default=16)
    parser.add_argument("--gsp-system-prompt-len", type=int, default=2048)
    parser.add_argument("--gsp-question-len", type=int, default=128)
    parser.add_argument("--gsp-output-len", type=int, default=256)
    parser.add_argument("--request-rate", type=float, default=math.inf,
                        help="Requests per second as a Poisson process; inf sends all at once.")
    parser.add_argument("--max-concurrency", type=int, default=None, help="Most requests in flight at once.")
    parser.add_argument("--disable-stream", action="store_true")
    parser.add_argument("--disable-ignore-eos", action="store_true")
    parser.add_argument("--extra-request-body", default=None,
                        help='JSON merged into every request body, e.g. \'{"top_p": 0.9}\'.')
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warmup-requests", type=int, default=1)
    parser.add_argument("--output-file", default=None, help="Append one JSON line with every figure of the run.")
    parser.add_argument("--output-details", action="store_true",
                        help="Also write per-request lengths, timings, texts and errors to the JSON line.")
    parser.add_argument("--disable-tqdm", action="store_true")
    return parser


def resolve_base_url(args: argparse.Namespace) -> str:
    return (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")


def request_headers() -> dict[str, str]:
    api_key = env.openai_api_key()
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def fetch_served_model(base_url: str) -> str:
    response = httpx.get(base_url + "/v1/models", headers=request_headers(), timeout=30)
    response.raise_for_status()
    return str(response.json()["data"][0]["id"])


def build_requests(args: argparse.Namespace, tokenizer: BenchTokenizer) -> list[BenchRequest]:
    name = args.dataset_name
    if name == "random":
        return random_dataset(tokenizer, args.num_prompts, args.random_input_len, args.random_output_len,
                              args.random_range_ratio, args.seed)
    if name == "random-ids":
        return random_ids_dataset(tokenizer, args.num_prompts, args.random_input_len, args.random_output_len,
                                  args.random_range_ratio, args.seed)
    if name == "sharegpt":
        if not args.dataset_path:
            raise SystemExit("--dataset-name sharegpt needs --dataset-path pointing at a ShareGPT JSON file")
        return sharegpt_dataset(tokenizer, args.dataset_path, args.num_prompts, args.seed,
                                args.sharegpt_output_len, args.sharegpt_context_len)
    return generated_shared_prefix_dataset(tokenizer, args.gsp_num_groups, args.gsp_prompts_per_group,
                                           args.gsp_system_prompt_len, args.gsp_question_len,
                                           args.gsp_output_len, args.seed)


def adapt_prompts(requests: list[BenchRequest], backend: Backend, tokenizer: BenchTokenizer) -> list[BenchRequest]:
    """Token-id prompts become text for endpoints that only take text."""
    if backend.accepts_token_ids:
        return requests
    return [replace(r, prompt=tokenizer.decode(r.prompt)) if isinstance(r.prompt, list) else r for r in requests]


async def run_benchmark(base_url: str, backend: Backend, model: str, requests: list[BenchRequest],
                        tokenizer: BenchTokenizer, *, request_rate: float = math.inf,
                        max_concurrency: int | None = None, stream: bool = True, ignore_eos: bool = True,
                        extra_body: dict[str, Any] | None = None, warmup_requests: int = 1, seed: int = 1,
                        show_progress: bool = True) -> tuple[list[RequestOutput], float]:
    """Send every request on its schedule; returns the outputs (in request order) and the duration."""
    extra_body = extra_body or {}
    headers = request_headers()
    timeout = httpx.Timeout(None, connect=60.0)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=max_concurrency or 1024)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        def send(request: BenchRequest) -> Awaitable[RequestOutput]:
            return send_request(client, base_url, backend, request, model, stream, ignore_eos, extra_body, headers)

        if warmup_requests > 0 and requests:
            warmups = [replace(requests[i % len(requests)],
                               output_len=min(requests[i % len(requests)].output_len, WARMUP_OUTPUT_LEN))
                       for i in range(warmup_requests)]
            print(f"Starting warmup with {len(warmups)} sequences...")
            warmup_outputs = await asyncio.gather(*(send(w) for w in warmups))
            if not any(output.success for output in warmup_outputs):
                raise RuntimeError(f"warmup failed, is the server up at {base_url}? "
                                   f"First error: {warmup_outputs[0].error}")
            print("Warmup completed. Starting main benchmark run...")

        limiter = asyncio.Semaphore(max_concurrency) if max_concurrency else contextlib.nullcontext()
        progress = tqdm(total=len(requests), disable=not show_progress)

        async def send_limited(request: BenchRequest) -> RequestOutput:
            async with limiter:
                output = await send(request)
            progress.update(1)
            return output

        offsets = arrival_offsets(len(requests), request_rate, seed)
        start = time.perf_counter()
        tasks = []
        for request, offset in zip(requests, offsets):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send_limited(request)))
        outputs = list(await asyncio.gather(*tasks))
        duration = time.perf_counter() - start
        progress.close()

    for output in outputs:
        if output.success:
            output.retokenized_output_len = len(tokenizer.encode(output.generated_text))
            if output.output_len < 0:  # the server reported no count and eos could end it early
                output.output_len = output.retokenized_output_len
    return outputs, duration


def result_record(args: argparse.Namespace, model: str, base_url: str, metrics: BenchmarkMetrics,
                  outputs: list[RequestOutput]) -> dict[str, Any]:
    errors = [output.error for output in outputs if not output.success]
    record: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "backend": args.backend, "base_url": base_url, "model": model, "dataset_name": args.dataset_name,
        "num_prompts": len(outputs), "random_input_len": args.random_input_len,
        "random_output_len": args.random_output_len, "random_range_ratio": args.random_range_ratio,
        "request_rate": args.request_rate, "max_concurrency": args.max_concurrency, "seed": args.seed,
        "stream": not args.disable_stream, "ignore_eos": not args.disable_ignore_eos,
        **metrics.to_dict(),
        "first_error": errors[0] if errors else None,
    }
    if args.output_details:
        record.update(
            input_lens=[o.prompt_len for o in outputs], output_lens=[o.output_len for o in outputs],
            ttfts=[o.ttft for o in outputs], itls=[o.itls for o in outputs],
            e2e_latencies=[o.e2e_latency for o in outputs],
            generated_texts=[o.generated_text for o in outputs], errors=[o.error for o in outputs],
        )
    return record


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    base_url = resolve_base_url(args)
    backend = get_backend(args.backend)
    extra_body = json.loads(args.extra_request_body) if args.extra_request_body else {}
    model = args.model or fetch_served_model(base_url)
    tokenizer = load_tokenizer(args.tokenizer or model)
    requests = adapt_prompts(build_requests(args, tokenizer), backend, tokenizer)
    print(f"#Input tokens: {sum(r.prompt_len for r in requests)}")
    print(f"#Output tokens: {sum(r.output_len for r in requests)}")

    outputs, duration = asyncio.run(run_benchmark(
        base_url, backend, model, requests, tokenizer, request_rate=args.request_rate,
        max_concurrency=args.max_concurrency, stream=not args.disable_stream,
        ignore_eos=not args.disable_ignore_eos, extra_body=extra_body, warmup_requests=args.warmup_requests,
        seed=args.seed, show_progress=not args.disable_tqdm))
    metrics = compute_metrics(outputs, duration)

    if metrics.failed:
        first_error = next(output.error for output in outputs if not output.success)
        print(f"Failed requests: {metrics.failed} of {len(outputs)}; first error: {first_error}", file=sys.stderr)
    print()
    print(format_result_block(args.backend, args.request_rate, args.max_concurrency, metrics))
    if args.output_file:
        append_jsonl(args.output_file, result_record(args, model, base_url, metrics, outputs))
    return 0 if metrics.completed else 1
