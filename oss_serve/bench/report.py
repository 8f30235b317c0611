"""The printed result block (labels and alignment as bench_serving users read them) and the JSONL record."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from oss_serve.bench.metrics import BenchmarkMetrics

RULE_WIDTH = 50


def _title(text: str, fill: str) -> str:
    return f"{text:{fill}^{RULE_WIDTH}}"


def _line(label: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{label:<40} {value:<10.2f}"
    return f"{label:<40} {value!s:<10}"


def format_request_rate(request_rate: float) -> str:
    return "inf" if math.isinf(request_rate) else str(float(request_rate))


def format_result_block(backend: str, request_rate: float, max_concurrency: int | None,
                        metrics: BenchmarkMetrics) -> str:
    m = metrics
    lines = [
        _title(" Serving Benchmark Result ", "="),
        _line("Backend:", backend),
        _line("Traffic request rate:", format_request_rate(request_rate)),
        _line("Max request concurrency:", max_concurrency if max_concurrency is not None else "not set"),
        _line("Successful requests:", m.completed),
        _line("Benchmark duration (s):", m.duration),
        _line("Total input tokens:", m.total_input_tokens),
        _line("Total generated tokens:", m.total_output_tokens),
        _line("Total generated tokens (retokenized):", m.total_output_tokens_retokenized),
        _line("Request throughput (req/s):", m.request_throughput),
        _line("Input token throughput (tok/s):", m.input_throughput),
        _line("Output token throughput (tok/s):", m.output_throughput),
        _line("Total token throughput (tok/s):", m.total_throughput),
        _line("Concurrency:", m.concurrency),
        _title("End-to-End Latency", "-"),
        _line("Mean E2E Latency (ms):", m.mean_e2e_latency_ms),
        _line("Median E2E Latency (ms):", m.median_e2e_latency_ms),
        _title("Time to First Token", "-"),
        _line("Mean TTFT (ms):", m.mean_ttft_ms),
        _line("Median TTFT (ms):", m.median_ttft_ms),
        _line("P99 TTFT (ms):", m.p99_ttft_ms),
        _title("Time per Output Token (excl. 1st token)", "-"),
        _line("Mean TPOT (ms):", m.mean_tpot_ms),
        _line("Median TPOT (ms):", m.median_tpot_ms),
        _line("P99 TPOT (ms):", m.p99_tpot_ms),
        _title("Inter-Token Latency", "-"),
        _line("Mean ITL (ms):", m.mean_itl_ms),
        _line("Median ITL (ms):", m.median_itl_ms),
        _line("P95 ITL (ms):", m.p95_itl_ms),
        _line("P99 ITL (ms):", m.p99_itl_ms),
        _line("Max ITL (ms):", m.max_itl_ms),
        "=" * RULE_WIDTH,
    ]
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    # JSON has no Infinity; an unlimited request rate is written as the string "inf".
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return value


def append_jsonl(path: str, record: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps({key: _json_safe(value) for key, value in record.items()}) + "\n")
