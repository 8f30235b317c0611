"""Small host data onto the device without waiting for the work already queued there.

A plain `torch.tensor(values, device="cuda")` copies and then waits for the stream to drain, which
would make the overlapped schedule (the host prepares step N+1 while the device runs step N) wait
for step N; from pageable memory even a non-blocking copy may. From page-locked memory it is a DMA
queued behind that work (torch's pinned allocator keeps the block until the copy has run).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def to_device(values: Sequence[int] | Sequence[float] | torch.Tensor, dtype: torch.dtype,
              device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        return torch.as_tensor(values, dtype=dtype)
    if isinstance(values, torch.Tensor):
        host = values.to(dtype).pin_memory()
    else:
        host = torch.tensor(values, dtype=dtype, pin_memory=True)
    return host.to(device, non_blocking=True)
