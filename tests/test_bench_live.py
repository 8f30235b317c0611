"""bench_serving end to end against the real server on the tiny checkpoint, one run per backend.

The server is started once per session.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from server_process import shared_server, stop_shared_servers

from oss_serve.bench.backends import BACKEND_NAMES
from oss_serve.bench.serving import main as bench_main

NUM_PROMPTS = 4
INPUT_LEN = 24
OUTPUT_LEN = 6


@pytest.fixture(scope="module")
def server_url(tiny_ckpt: Path, request: pytest.FixtureRequest) -> str:
    request.config.add_cleanup(stop_shared_servers)
    return shared_server(tiny_ckpt).base_url


def _run(capsys: pytest.CaptureFixture[str], tmp_path: Path, server_url: str, tiny_ckpt: Path,
         *flags: str) -> tuple[str, dict]:
    output_file = tmp_path / "runs.jsonl"
    exit_code = bench_main(["--base-url", server_url, "--tokenizer", str(tiny_ckpt), "--num-prompts", str(NUM_PROMPTS),
                            "--random-input-len", str(INPUT_LEN), "--random-output-len", str(OUTPUT_LEN),
                            "--random-range-ratio", "1", "--output-file", str(output_file), "--output-details",
                            "--disable-tqdm", *flags])
    printed = capsys.readouterr().out
    assert exit_code == 0, printed
    [line] = output_file.read_text().splitlines()
    return printed, json.loads(line)


def _assert_exact_run(printed: str, record: dict, num_prompts: int = NUM_PROMPTS) -> None:
    assert "============ Serving Benchmark Result ============" in printed
    assert f"{'Successful requests:':<40} {num_prompts:<10}" in printed
    assert f"{'Total input tokens:':<40} {num_prompts * INPUT_LEN:<10}" in printed
    assert f"{'Total generated tokens:':<40} {num_prompts * OUTPUT_LEN:<10}" in printed
    assert record["completed"] == num_prompts and record["failed"] == 0, record["first_error"]
    assert record["total_input_tokens"] == num_prompts * INPUT_LEN
    assert record["total_output_tokens"] == num_prompts * OUTPUT_LEN
    assert record["output_lens"] == [OUTPUT_LEN] * num_prompts
    for ttft, e2e in zip(record["ttfts"], record["e2e_latencies"]):
        assert 0 < ttft <= e2e


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_every_backend_streams_exact_counts(backend: str, capsys, tmp_path: Path, server_url: str,
                                            tiny_ckpt: Path) -> None:
    printed, record = _run(capsys, tmp_path, server_url, tiny_ckpt, "--backend", backend)
    _assert_exact_run(printed, record)
    assert record["backend"] == backend and record["stream"] is True
    if backend in ("oss-serve", "sglang-oai", "openai"):
        # Raw text streams one chunk per token; chat and responses may hold back harmony markup
        # that a random-weight model emits, so they can have fewer text chunks.
        assert record["mean_itl_ms"] > 0


@pytest.mark.parametrize("backend", ["oss-serve", "openai", "openai-chat", "openai-responses"])
def test_non_streamed_replies(backend: str, capsys, tmp_path: Path, server_url: str, tiny_ckpt: Path) -> None:
    printed, record = _run(capsys, tmp_path, server_url, tiny_ckpt, "--backend", backend, "--disable-stream")
    _assert_exact_run(printed, record)
    assert record["ttfts"] == record["e2e_latencies"]


def test_poisson_rate_with_concurrency_limit(capsys, tmp_path: Path, server_url: str, tiny_ckpt: Path) -> None:
    printed, record = _run(capsys, tmp_path, server_url, tiny_ckpt, "--request-rate", "20", "--max-concurrency", "2",
                           "--seed", "3")
    _assert_exact_run(printed, record)
    assert f"{'Traffic request rate:':<40} {'20.0':<10}" in printed
    assert f"{'Max request concurrency:':<40} {'2':<10}" in printed
    assert record["concurrency"] <= 2.0 + 1e-6


def test_random_ids_prompts(capsys, tmp_path: Path, server_url: str, tiny_ckpt: Path) -> None:
    printed, record = _run(capsys, tmp_path, server_url, tiny_ckpt, "--dataset-name", "random-ids")
    _assert_exact_run(printed, record)


def test_generated_shared_prefix(capsys, tmp_path: Path, server_url: str, tiny_ckpt: Path) -> None:
    printed, record = _run(capsys, tmp_path, server_url, tiny_ckpt, "--dataset-name", "generated-shared-prefix",
                           "--gsp-num-groups", "2", "--gsp-prompts-per-group", "3", "--gsp-system-prompt-len", "40",
                           "--gsp-question-len", "8", "--gsp-output-len", str(OUTPUT_LEN))
    assert record["completed"] == 6 and record["failed"] == 0, record["first_error"]
    assert record["total_output_tokens"] == 6 * OUTPUT_LEN
    assert "Successful requests:" in printed

