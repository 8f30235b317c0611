"""Per-request timings and the run's figures, with the definitions bench_serving users expect.

TTFT: send -> first non-empty chunk. ITL: gaps between consecutive non-empty chunks.
E2E: send -> last chunk. TPOT: (E2E - TTFT) / (output tokens - 1), for requests with more than
one output token. Concurrency: sum of E2E latencies / benchmark duration.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class RequestOutput:
    success: bool = False
    prompt_len: int = 0
    output_len: int = 0
    retokenized_output_len: int = 0
    generated_text: str = ""
    send_time: float = 0.0
    # Arrival times (same clock as send_time) of chunks that carried generated text or tokens.
    token_chunk_times: list[float] = field(default_factory=list)
    # Arrival of the last chunk of any kind (usage, [DONE]) or of the whole reply when not streamed.
    end_time: float = 0.0
    error: str = ""

    @property
    def ttft(self) -> float:
        return (self.token_chunk_times[0] if self.token_chunk_times else self.end_time) - self.send_time

    @property
    def itls(self) -> list[float]:
        times = self.token_chunk_times
        return [later - earlier for earlier, later in zip(times, times[1:])]

    @property
    def e2e_latency(self) -> float:
        return self.end_time - self.send_time

    @property
    def tpot(self) -> float | None:
        if self.output_len <= 1:
            return None
        return (self.e2e_latency - self.ttft) / (self.output_len - 1)


@dataclass
class BenchmarkMetrics:
    completed: int
    failed: int
    duration: float
    total_input_tokens: int
    total_output_tokens: int
    total_output_tokens_retokenized: int
    request_throughput: float
    input_throughput: float
    output_throughput: float
    total_throughput: float
    concurrency: float
    mean_e2e_latency_ms: float
    median_e2e_latency_ms: float
    std_e2e_latency_ms: float
    p99_e2e_latency_ms: float
    mean_ttft_ms: float
    median_ttft_ms: float
    std_ttft_ms: float
    p99_ttft_ms: float
    mean_tpot_ms: float
    median_tpot_ms: float
    std_tpot_ms: float
    p99_tpot_ms: float
    mean_itl_ms: float
    median_itl_ms: float
    std_itl_ms: float
    p95_itl_ms: float
    p99_itl_ms: float
    max_itl_ms: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _in_ms(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64) * 1000.0


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else 0.0


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if values.size else 0.0


def _std(values: np.ndarray) -> float:
    return float(values.std()) if values.size else 0.0


def _percentile(values: np.ndarray, q: float) -> float:
    # Linear interpolation between closest ranks (numpy's default), as the usual clients report.
    return float(np.percentile(values, q)) if values.size else 0.0


def compute_metrics(outputs: list[RequestOutput], duration: float) -> BenchmarkMetrics:
    done = [output for output in outputs if output.success]
    e2e = _in_ms([output.e2e_latency for output in done])
    ttft = _in_ms([output.ttft for output in done])
    tpot = _in_ms([tpot for output in done if (tpot := output.tpot) is not None])
    itl = _in_ms([gap for output in done for gap in output.itls])
    total_input = sum(output.prompt_len for output in done)
    total_output = sum(output.output_len for output in done)
    per_second = 1.0 / duration if duration > 0 else 0.0
    return BenchmarkMetrics(
        completed=len(done),
        failed=len(outputs) - len(done),
        duration=duration,
        total_input_tokens=total_input,
        total_output_tokens=total_output,
        total_output_tokens_retokenized=sum(output.retokenized_output_len for output in done),
        request_throughput=len(done) * per_second,
        input_throughput=total_input * per_second,
        output_throughput=total_output * per_second,
        total_throughput=(total_input + total_output) * per_second,
        concurrency=float(e2e.sum()) / 1000.0 * per_second,
        mean_e2e_latency_ms=_mean(e2e),
        median_e2e_latency_ms=_median(e2e),
        std_e2e_latency_ms=_std(e2e),
        p99_e2e_latency_ms=_percentile(e2e, 99),
        mean_ttft_ms=_mean(ttft),
        median_ttft_ms=_median(ttft),
        std_ttft_ms=_std(ttft),
        p99_ttft_ms=_percentile(ttft, 99),
        mean_tpot_ms=_mean(tpot),
        median_tpot_ms=_median(tpot),
        std_tpot_ms=_std(tpot),
        p99_tpot_ms=_percentile(tpot, 99),
        mean_itl_ms=_mean(itl),
        median_itl_ms=_median(itl),
        std_itl_ms=_std(itl),
        p95_itl_ms=_percentile(itl, 95),
        p99_itl_ms=_percentile(itl, 99),
        max_itl_ms=float(itl.max()) if itl.size else 0.0,
    )
