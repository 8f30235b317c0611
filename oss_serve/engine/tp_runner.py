"""Rank 0's model runner under tensor parallelism."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from oss_serve.engine.messages import CaptureGraphs
from oss_serve.engine.model_runner import ModelRunner, PendingInputs
from oss_serve.engine.paged_kv import PagedKVCache
from oss_serve.engine.scheduler import ScheduledSeq

if TYPE_CHECKING:
    from oss_serve.engine.tp_launcher import TensorParallelLeader


class TensorParallelRunner(ModelRunner):
    """Every step's plan goes to the worker ranks before rank 0 queues its own forward, so all ranks run
    the same forward and meet at the same all-reduces. Sampling stays on rank 0; tokens the plan takes
    from the device (overlapped schedule) are broadcast from rank 0's draws, device to device."""

    def __init__(self, model: torch.nn.Module, cache: PagedKVCache, device: torch.device, attention_backend: str,
                 max_running_requests: int, max_pages_per_seq: int, leader: TensorParallelLeader) -> None:
        super().__init__(model, cache, device, attention_backend, max_running_requests, max_pages_per_seq)
        self.leader = leader

    def forward(self, batch: list[ScheduledSeq], sample_rows: list[int], pending: PendingInputs | None = None,
                drawn: torch.Tensor | None = None) -> torch.Tensor | None:
        plan = self.plan(batch, sample_rows, pending)
        self.leader.send(plan)
        if plan.pending is not None:
            self.leader.group.broadcast(drawn)
        return self.execute(plan, drawn)

    def enable_cuda_graphs(self, max_batch_size: int) -> None:
        self.leader.send(CaptureGraphs(max_batch_size))
        super().enable_cuda_graphs(max_batch_size)
