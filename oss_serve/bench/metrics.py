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


def _latency_stats(name: str, ms: np.ndarray, percentiles: tuple[int, ...]) -> dict[str, float]:
    """Mean, median, std and percentiles, as `{stat}_{name}_ms`; all 0 when there are no values."""
    if not ms.size:
        ms = np.zeros(1)
    stats = {f"mean_{name}_ms": float(ms.mean()), f"median_{name}_ms": float(np.median(ms)),
             f"std_{name}_ms": float(ms.std())}
    # Linear interpolation between closest ranks (numpy's default), as the usual clients report.
    return stats | {f"p{q}_{name}_ms": float(np.percentile(ms, q)) for q in percentiles}


def compute_metrics(outputs: list[RequestOutput], duration: float) -> BenchmarkMetrics:
    done = [output for output in outputs if output.success]
    e2e = _in_ms([output.e2e_latency for output in done])
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
        **_latency_stats("e2e_latency", e2e, (99,)),
        **_latency_stats("ttft", _in_ms([output.ttft for output in done]), (99,)),
        **_latency_stats("tpot", _in_ms([tpot for output in done if (tpot := output.tpot) is not None]), (99,)),
        **_latency_stats("itl", itl, (95, 99)),
        max_itl_ms=float(itl.max()) if itl.size else 0.0,
    )
