"""When each request is sent: all at once (rate inf) or as a Poisson process."""
from __future__ import annotations

import math

import numpy as np


def arrival_offsets(num_requests: int, request_rate: float, seed: int) -> list[float]:
    """Seconds after the start at which each request goes out.

    A Poisson process of `request_rate` requests per second has exponentially distributed gaps
    with mean 1 / rate; the first request goes out at once.
    """
    if num_requests <= 0:
        return []
    if math.isinf(request_rate):
        return [0.0] * num_requests
    if request_rate <= 0:
        raise ValueError(f"request rate must be positive or inf, got {request_rate}")
    gaps = np.random.default_rng(seed).exponential(1.0 / request_rate, size=num_requests - 1)
    return [0.0] + [float(t) for t in np.cumsum(gaps)]
