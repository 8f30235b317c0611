"""The printed block: labels, order and alignment as other benchmark clients print them; the JSONL line."""
from __future__ import annotations

import json
import math
from pathlib import Path

from oss_serve.bench.metrics import RequestOutput, compute_metrics
from oss_serve.bench.report import append_jsonl, format_result_block

EXPECTED_LABELS = [
    "Backend:", "Traffic request rate:", "Max request concurrency:", "Successful requests:",
    "Benchmark duration (s):", "Total input tokens:", "Total generated tokens:",
    "Total generated tokens (retokenized):", "Request throughput (req/s):", "Input token throughput (tok/s):",
    "Output token throughput (tok/s):", "Total token throughput (tok/s):", "Concurrency:",
    "Mean E2E Latency (ms):", "Median E2E Latency (ms):",
    "Mean TTFT (ms):", "Median TTFT (ms):", "P99 TTFT (ms):",
    "Mean TPOT (ms):", "Median TPOT (ms):", "P99 TPOT (ms):",
    "Mean ITL (ms):", "Median ITL (ms):", "P95 ITL (ms):", "P99 ITL (ms):", "Max ITL (ms):",
]


def _metrics():
    return compute_metrics([RequestOutput(success=True, prompt_len=12, output_len=3, retokenized_output_len=3,
                                          send_time=0.0, token_chunk_times=[0.5, 0.75, 1.0], end_time=1.0)],
                           duration=1.25)


def test_block_layout() -> None:
    lines = format_result_block("oss-serve", math.inf, None, _metrics()).splitlines()
    assert lines[0] == "============ Serving Benchmark Result ============"
    assert lines[-1] == "=" * 50
    assert "----------------End-to-End Latency----------------" in lines
    assert "---------------Time to First Token----------------" in lines
    assert "-----Time per Output Token (excl. 1st token)------" in lines
    assert "---------------Inter-Token Latency----------------" in lines
    value_lines = [line for line in lines if not line.startswith(("=", "-"))]
    assert [line[:40].rstrip() for line in value_lines] == EXPECTED_LABELS
    for line in value_lines:  # label in 40 columns, a space, value left-aligned in 10
        assert len(line) >= 51 and line[40] == " " and line[41] != " "
    assert value_lines[0] == "Backend:" + " " * 32 + " oss-serve "
    assert value_lines[1] == f"{'Traffic request rate:':<40} {'inf':<10}"
    assert value_lines[2] == f"{'Max request concurrency:':<40} {'not set':<10}"
    assert value_lines[3] == f"{'Successful requests:':<40} {1:<10}"
    assert value_lines[4] == f"{'Benchmark duration (s):':<40} {'1.25':<10}"
    assert value_lines[5] == f"{'Total input tokens:':<40} {'12':<10}"
    assert value_lines[13] == f"{'Mean E2E Latency (ms):':<40} {'1000.00':<10}"
    assert value_lines[15] == f"{'Mean TTFT (ms):':<40} {'500.00':<10}"
    assert value_lines[18] == f"{'Mean TPOT (ms):':<40} {'250.00':<10}"


def test_block_with_rate_and_concurrency() -> None:
    text = format_result_block("openai-chat", 4.0, 16, _metrics())
    assert f"{'Traffic request rate:':<40} {'4.0':<10}" in text
    assert f"{'Max request concurrency:':<40} {'16':<10}" in text


def test_jsonl_appends_one_parseable_line_per_run(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "runs.jsonl"
    append_jsonl(str(out), {"backend": "oss-serve", "request_rate": math.inf, **_metrics().to_dict()})
    append_jsonl(str(out), {"backend": "openai", "request_rate": 2.0})
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    assert records[0]["request_rate"] == "inf" and records[1]["request_rate"] == 2.0
    assert records[0]["mean_ttft_ms"] == 500.0 and records[0]["completed"] == 1
