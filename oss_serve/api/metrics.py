"""Prometheus metrics (--enable-metrics): request counts, tokens, latencies, KV use, queue."""
from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from oss_serve.engine.messages import EngineStats
from oss_serve.engine.outputs import StreamOutput

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
PREFIX = "oss_serve:"


class ServerMetrics:
    """Observes every engine output; reads engine gauges at scrape time."""

    def __init__(self, read_engine_stats: Callable[[], EngineStats]) -> None:
        self.registry = CollectorRegistry()
        self._read_engine_stats = read_engine_stats
        self.http_requests = Counter(f"{PREFIX}http_requests", "HTTP requests by route and status.",
                                     ("route", "status"), registry=self.registry)
        self.finished_requests = Counter(f"{PREFIX}requests_finished", "Engine requests finished, by reason.",
                                         ("finish_reason",), registry=self.registry)
        self.prompt_tokens = Counter(f"{PREFIX}prompt_tokens", "Prompt tokens processed.", registry=self.registry)
        self.cached_tokens = Counter(f"{PREFIX}cached_tokens", "Prompt tokens served from the prefix cache.",
                                     registry=self.registry)
        self.generation_tokens = Counter(f"{PREFIX}generation_tokens", "Tokens generated.", registry=self.registry)
        self.time_to_first_token = Histogram(f"{PREFIX}time_to_first_token_seconds", "Time to first token.",
                                             buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.inter_token_latency = Histogram(f"{PREFIX}inter_token_latency_seconds",
                                             "Time between streamed outputs, per token.",
                                             buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.e2e_latency = Histogram(f"{PREFIX}e2e_request_latency_seconds", "Request latency.",
                                     buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.running_requests = Gauge(f"{PREFIX}num_running_reqs", "Requests decoding.", registry=self.registry)
        self.queued_requests = Gauge(f"{PREFIX}num_queue_reqs", "Requests waiting.", registry=self.registry)
        self.kv_usage = Gauge(f"{PREFIX}token_usage", "Fraction of the KV pool in use.", registry=self.registry)
        self.kv_used_pages = Gauge(f"{PREFIX}kv_used_pages", "Full-attention KV pool pages in use.",
                                   registry=self.registry)

    def on_output(self, output: StreamOutput, *, started_at: float, previous_at: float) -> None:
        now = time.monotonic()
        new_tokens = len(output.new_token_ids)
        if new_tokens:
            produced_before = output.completion_tokens - new_tokens
            if produced_before == 0:
                self.time_to_first_token.observe(now - started_at)
                self.prompt_tokens.inc(output.prompt_tokens)
                self.cached_tokens.inc(output.cached_tokens)
            else:
                self.inter_token_latency.observe((now - previous_at) / new_tokens)
            self.generation_tokens.inc(new_tokens)
        if output.finished:
            self.e2e_latency.observe(now - started_at)
            self.finished_requests.labels(output.finish_reason or "unknown").inc()

    def on_abort(self, request_id: str) -> None:
        self.finished_requests.labels("abort").inc()

    def render(self) -> bytes:
        stats = self._read_engine_stats()
        self.running_requests.set(stats.num_running)
        self.queued_requests.set(stats.num_waiting)
        self.kv_usage.set(stats.kv_usage)
        self.kv_used_pages.set(stats.full_pages_used)
        return generate_latest(self.registry)
