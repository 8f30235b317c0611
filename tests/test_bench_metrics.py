"""Metric arithmetic on hand-made chunk timestamps, with answers computed by hand."""
from __future__ import annotations

import pytest

from oss_serve.bench.metrics import RequestOutput, compute_metrics


def _outputs() -> list[RequestOutput]:
    return [
        # TTFT 0.1, ITL [0.05, 0.10, 0.05], E2E 0.32 (a usage chunk after the last token), TPOT 0.22 / 3
        RequestOutput(success=True, prompt_len=10, output_len=4, retokenized_output_len=5, send_time=0.0,
                      token_chunk_times=[0.1, 0.15, 0.25, 0.30], end_time=0.32),
        # TTFT 0.2, ITL [0.3], E2E 0.5, TPOT 0.3
        RequestOutput(success=True, prompt_len=20, output_len=2, retokenized_output_len=2, send_time=1.0,
                      token_chunk_times=[1.2, 1.5], end_time=1.5),
        # failed: counts in `failed` only
        RequestOutput(success=False, prompt_len=30, output_len=0, send_time=1.0, end_time=1.1, error="boom"),
        # one token: TTFT 0.4 = E2E, no TPOT, no ITL
        RequestOutput(success=True, prompt_len=5, output_len=1, retokenized_output_len=1, send_time=2.0,
                      token_chunk_times=[2.4], end_time=2.4),
    ]


def test_per_request_timings() -> None:
    first = _outputs()[0]
    assert first.ttft == pytest.approx(0.1)
    assert first.itls == pytest.approx([0.05, 0.10, 0.05])
    assert first.e2e_latency == pytest.approx(0.32)
    assert first.tpot == pytest.approx(0.22 / 3)
    assert _outputs()[3].tpot is None


def test_non_streamed_reply_has_ttft_equal_to_e2e() -> None:
    whole = RequestOutput(success=True, output_len=8, send_time=3.0, token_chunk_times=[3.5], end_time=3.5)
    assert whole.ttft == whole.e2e_latency == pytest.approx(0.5)
    assert whole.itls == []


def test_run_figures() -> None:
    m = compute_metrics(_outputs(), duration=2.0)
    assert (m.completed, m.failed) == (3, 1)
    assert (m.total_input_tokens, m.total_output_tokens, m.total_output_tokens_retokenized) == (35, 7, 8)
    assert m.request_throughput == pytest.approx(1.5)
    assert m.input_throughput == pytest.approx(17.5)
    assert m.output_throughput == pytest.approx(3.5)
    assert m.total_throughput == pytest.approx(21.0)
    # (0.32 + 0.5 + 0.4) / 2.0
    assert m.concurrency == pytest.approx(0.61)

    # E2E ms [320, 500, 400]; P99 between ranks 2 and 3: 400 + 0.98 * 100
    assert m.mean_e2e_latency_ms == pytest.approx(1220 / 3)
    assert m.median_e2e_latency_ms == pytest.approx(400)
    assert m.p99_e2e_latency_ms == pytest.approx(498)
    # TTFT ms [100, 200, 400]
    assert m.mean_ttft_ms == pytest.approx(700 / 3)
    assert m.median_ttft_ms == pytest.approx(200)
    assert m.p99_ttft_ms == pytest.approx(396)
    # TPOT ms [73.33, 300] (the one-token request has none)
    assert m.mean_tpot_ms == pytest.approx((220 / 3 + 300) / 2)
    assert m.median_tpot_ms == pytest.approx((220 / 3 + 300) / 2)
    assert m.p99_tpot_ms == pytest.approx(220 / 3 + 0.99 * (300 - 220 / 3))
    # ITL ms [50, 100, 50, 300] pooled over requests; sorted [50, 50, 100, 300]
    assert m.mean_itl_ms == pytest.approx(125)
    assert m.median_itl_ms == pytest.approx(75)
    assert m.p95_itl_ms == pytest.approx(100 + 0.85 * 200)
    assert m.p99_itl_ms == pytest.approx(100 + 0.97 * 200)
    assert m.max_itl_ms == pytest.approx(300)


def test_nothing_succeeded_gives_zeros_not_errors() -> None:
    m = compute_metrics([RequestOutput(success=False, error="refused")], duration=1.0)
    assert m.completed == 0 and m.failed == 1
    assert m.mean_ttft_ms == m.p99_itl_ms == m.concurrency == 0.0
