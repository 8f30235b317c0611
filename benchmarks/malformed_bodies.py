"""Replay every malformed request body once against a real oss-serve server on loopback, checking after
each that the server still answers /health (and, for a server started here, that its process lives).

    python benchmarks/malformed_bodies.py --model-path CKPT            # starts its own CPU server
    python benchmarks/malformed_bodies.py --base-url http://127.0.0.1:30000 [--api-key KEY]
    python benchmarks/malformed_bodies.py --model-path CKPT --short     # fewer members per class (the tests)
    python benchmarks/malformed_bodies.py --model-path CKPT --list      # only print the bodies' count

The bodies are classes of input, not a few cases: for every numeric field of every endpoint, integers
across the whole int64 range and past it (and non-finite floats, wrong types); for every token-id list,
ids at and around the vocabulary's edges and past int64, at the end of long valid lists and in batches;
null for every field; huge lists and strings. A body may be refused (400/404/413) or served (200); it
must never get a 5xx, hang past --timeout, or leave /health failing. Prints one JSON object with the
counts and exits 1 when any check fails.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # server_process: the tests' server harness

import httpx

VOCAB_EDGE = 201088  # o200k_harmony; ids at and past it must be refused
RAW = "\x00raw:"  # a value written into the JSON text as it is: NaN, huge integers


def raw(text: str) -> str:
    return RAW + text


INTEGERS = [-(2 ** 64) - 1, -(2 ** 63) - 1, -(2 ** 63), -(2 ** 31) - 1, -1, 0, 1, 2, 2 ** 31, 2 ** 53 + 1,
            2 ** 63 - 1, 2 ** 63, 2 ** 64, 10 ** 30, raw("9" * 5000)]
NUMBERS = [*INTEGERS, 0.5, -0.5, 1e-320, 1e308, -1e308, raw("NaN"), raw("Infinity"), raw("-Infinity"),
           True, "1", [], {}]
# --short (what the tests run): each class by a few members, its edges and past them.
SHORT_NUMBERS = [-(2 ** 63) - 1, -1, 0, 2 ** 63, raw("9" * 5000), 1e-320, raw("NaN"), "1"]
TOKEN_IDS = [-(2 ** 63) - 1, -1, 0, VOCAB_EDGE - 1, VOCAB_EDGE, 2 ** 31, 2 ** 63, 2 ** 64 + 7, raw("9" * 400)]
HUGE_STRING = "y" * 1_000_000

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
ENDPOINTS: dict[str, dict[str, Any]] = {
    "/v1/completions": {"prompt": "hi", "max_tokens": 4},
    "/v1/chat/completions": CHAT,
    "/v1/responses": {"input": "hi", "max_output_tokens": 4, "store": False},
    "/generate": {"text": "hi", "sampling_params": {"max_new_tokens": 4}},
    "/separate_reasoning": {"text": "hi", "reasoning_parser": "gpt-oss"},
    "/parse_function_call": {"text": "hi", "tool_call_parser": "gpt-oss", "tools": []},
}
SAMPLING = ["temperature", "top_p", "top_k", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty",
            "seed", "n"]
NUMERIC_FIELDS: dict[str, list[str]] = {
    "/v1/completions": [*SAMPLING, "max_tokens", "logprobs", "best_of"],
    "/v1/chat/completions": [*SAMPLING, "max_tokens", "max_completion_tokens", "top_logprobs", "max_reasoning_tokens"],
    "/v1/responses": ["temperature", "top_p", "top_k", "seed", "max_output_tokens", "max_tool_calls",
                      "max_reasoning_tokens"],
    "/generate": [*(f"sampling_params.{name}" for name in [*SAMPLING, "max_new_tokens", "top_logprobs"]),
                  "top_logprobs_num"],
}
TOKEN_ID_FIELDS: dict[str, list[str]] = {
    "/v1/completions": ["prompt", "stop_token_ids"],
    "/v1/chat/completions": ["stop_token_ids"],
    "/generate": ["input_ids", "sampling_params.stop_token_ids"],
}
# Every field a client may send, optional or not: each gets a null.
ALL_FIELDS: dict[str, list[str]] = {
    "/v1/completions": [*SAMPLING, "model", "prompt", "max_tokens", "stop", "stop_token_ids", "stream",
                        "stream_options", "logprobs", "echo", "best_of", "ignore_eos", "user", "skip_special_tokens"],
    "/v1/chat/completions": [*SAMPLING, "model", "messages", "max_tokens", "max_completion_tokens", "stop", "stream",
                             "stream_options", "tools", "tool_choice", "parallel_tool_calls", "response_format",
                             "reasoning_effort", "logprobs", "top_logprobs", "user", "separate_reasoning"],
    "/v1/responses": ["model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
                      "max_output_tokens", "max_tool_calls", "temperature", "top_p", "stream", "store",
                      "previous_response_id", "background", "include", "metadata", "text", "reasoning", "user"],
    "/generate": ["text", "input_ids", "sampling_params", "stream", "rid", "return_logprob", "top_logprobs_num",
                  *(f"sampling_params.{name}" for name in [*SAMPLING, "max_new_tokens", "stop", "stop_token_ids",
                                                           "ignore_eos", "json_schema", "regex"])],
    "/separate_reasoning": ["text", "reasoning_parser"],
    "/parse_function_call": ["text", "tool_call_parser", "tools"],
}
LIST_FIELDS: dict[str, dict[str, Any]] = {  # field -> one element; sent 100,000 times over
    "/v1/completions": {"prompt": [1], "stop": "x", "stop_token_ids": 1},
    "/v1/chat/completions": {"messages": {"role": "user", "content": "hi"}, "stop": "x",
                             "tools": {"type": "function", "function": {"name": "f"}}},
    "/v1/responses": {"input": {"role": "user", "content": "hi"}, "tools": {"type": "function", "name": "f"},
                      "include": "x"},
    "/generate": {"text": "hi", "input_ids": [1], "sampling_params.stop": "x"},
    "/parse_function_call": {"tools": {"type": "function", "function": {"name": "f"}}},
}


@dataclass(frozen=True)
class Case:
    endpoint: str
    label: str
    body: bytes


def _with(base: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(base))
    *parents, name = dotted.split(".")
    target = body
    for parent in parents:
        target = target.setdefault(parent, {})
    if value is _DROP:
        target.pop(name, None)
    else:
        target[name] = value
    return body


_DROP = object()


def encode(body: dict[str, Any]) -> bytes:
    """JSON text, with RAW values written as they are (json.dumps refuses 5,000-digit integers)."""
    placeholders: dict[str, str] = {}

    def swap(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(RAW):
            key = f"__raw_{len(placeholders)}__"
            placeholders[f'"{key}"'] = value[len(RAW):]
            return key
        if isinstance(value, list):
            return [swap(item) for item in value]
        if isinstance(value, dict):
            return {key: swap(item) for key, item in value.items()}
        return value

    text = json.dumps(swap(body))
    for key, value in placeholders.items():
        text = text.replace(key, value)
    return text.encode()


def cases(short: bool = False) -> Iterator[Case]:
    numbers = SHORT_NUMBERS if short else NUMBERS
    token_ids = [-1, VOCAB_EDGE, 2 ** 64 + 7] if short else TOKEN_IDS
    for endpoint, base in ENDPOINTS.items():
        for field in NUMERIC_FIELDS.get(endpoint, []):
            for value in numbers:
                yield Case(endpoint, f"{field}={_short(value)}", encode(_with(base, field, value)))
        for field in TOKEN_ID_FIELDS.get(endpoint, []):
            first_text = "prompt" if endpoint == "/v1/completions" else "text"
            start = _with(base, first_text, _DROP) if field in ("prompt", "input_ids") else base
            for token_id in token_ids:
                for shape, ids in (("alone", [token_id]), ("after 2,000 valid ids", [1] * 2000 + [token_id]),
                                   ("in a batch", [[1, 2], [token_id]])):
                    if shape == "in a batch" and field not in ("prompt", "input_ids"):
                        continue
                    yield Case(endpoint, f"{field} {shape}: {_short(token_id)}", encode(_with(start, field, ids)))
        for field in ALL_FIELDS[endpoint]:
            yield Case(endpoint, f"{field}=null", encode(_with(base, field, None)))
        for field, element in LIST_FIELDS.get(endpoint, {}).items():
            yield Case(endpoint, f"{field}: 100,000 entries", encode(_with(base, field, [element] * 100_000)))
        text_field = {"/v1/completions": "prompt", "/v1/responses": "input", "/generate": "text"}.get(endpoint)
        if text_field:
            yield Case(endpoint, f"{text_field}: 1 MB string", encode(_with(base, text_field, HUGE_STRING)))
        yield Case(endpoint, "lone surrogate", encode(base).replace(b'"hi"', b'"\\ud800"', 1))
        yield Case(endpoint, "not an object", b"[1, 2, 3]")
        yield Case(endpoint, "n=128 (served)", encode(_with(base, "sampling_params.n" if endpoint == "/generate"
                                                            else "n", 128)))


def _short(value: Any) -> str:
    text = value[len(RAW):] if isinstance(value, str) and value.startswith(RAW) else repr(value)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} chars)"


def replay(base_url: str, headers: dict[str, str], timeout_s: float, process: Any = None,
           short: bool = False) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    started = time.monotonic()
    count = 0
    timings: list[tuple[float, str]] = []
    with httpx.Client(base_url=base_url, headers={**headers, "content-type": "application/json"}) as client:
        for case in cases(short):
            count += 1
            sent = time.monotonic()
            try:
                status = str(client.post(case.endpoint, content=case.body, timeout=timeout_s).status_code)
            except httpx.HTTPError as error:
                status = f"no answer ({type(error).__name__})"
            timings.append((time.monotonic() - sent, f"{case.endpoint} {case.label}: {status}"))
            statuses[status] += 1
            healthy = _healthy(client) and (process is None or process.poll() is None)
            if status.startswith("5") or not status[0].isdigit() or not healthy:
                failures.append({"endpoint": case.endpoint, "case": case.label, "status": status,
                                 "healthy_after": healthy})
                if not healthy:
                    break
    return {"bodies": count, "seconds": round(time.monotonic() - started, 1), "statuses": dict(statuses),
            "server_errors_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
            "no_answer": sum(n for s, n in statuses.items() if not s[0].isdigit()),
            "slowest": [f"{seconds:.1f} s {label}" for seconds, label in sorted(timings, reverse=True)[:10]],
            "failures": failures[:50], "ok": not failures}


def _healthy(client: httpx.Client) -> bool:
    try:
        return client.get("/health", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--base-url", help="a running server")
    target.add_argument("--model-path", help="start a CPU server on this checkpoint (small context: bounded work)")
    parser.add_argument("--api-key")
    parser.add_argument("--timeout", type=float, default=45.0, help="seconds a body may take to be answered")
    parser.add_argument("--short", action="store_true", help="each class by fewer members (what the tests run)")
    parser.add_argument("--list", action="store_true", help="print the number of bodies and exit")
    args = parser.parse_args(argv)
    if args.list:
        print(json.dumps({"bodies": sum(1 for _ in cases(args.short))}))
        return 0
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    if args.base_url:
        summary = replay(args.base_url.rstrip("/"), headers, args.timeout, short=args.short)
    else:
        from server_process import ServerProcess

        server = ServerProcess(args.model_path, ["--device", "cpu", "--context-length", "64",
                                                 "--max-total-tokens", "8192",
                                                 *(["--api-key", args.api_key] if args.api_key else [])])
        try:
            summary = replay(server.base_url, headers, args.timeout, server.process, args.short)
        finally:
            summary["server_exit_code"] = server.stop()
        if not summary["ok"]:
            summary["server_log_tail"] = server.log_tail(3000)
    print(json.dumps(summary, indent=1))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
