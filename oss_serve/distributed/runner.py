"""Rank 0's model runner under tensor parallelism."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from oss_serve.attention.paged import PagedBatch, PagedKVCache
from oss_serve.distributed.step_inputs import StepInputs
from oss_serve.engine.model_runner import ModelRunner
from oss_serve.engine.scheduler import ScheduledSeq

if TYPE_CHECKING:
    from oss_serve.distributed.launcher import TensorParallelLeader


class TensorParallelRunner(ModelRunner):
    """Every batch rank 0 prepares goes to the worker ranks before rank 0's own forward, so all ranks
    run the same forward and meet at the same all-reduces. Sampling stays on rank 0."""

    def __init__(self, model: torch.nn.Module, cache: PagedKVCache, device: torch.device, attention_backend: str,
                 max_running_requests: int, max_pages_per_seq: int, leader: TensorParallelLeader) -> None:
        super().__init__(model, cache, device, attention_backend, max_running_requests, max_pages_per_seq)
        self.leader = leader

    def _prepare(self, batch: list[ScheduledSeq]) -> tuple[torch.Tensor, torch.Tensor, PagedBatch]:
        input_ids, positions, paged = super()._prepare(batch)
        self.leader.send(StepInputs.pack(input_ids, positions, paged))
        return input_ids, positions, paged
