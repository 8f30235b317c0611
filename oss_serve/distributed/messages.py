"""The messages rank 0 sends to worker ranks, and the packed step inputs they carry."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from oss_serve.attention.paged import PagedBatch


@dataclass(frozen=True)
class KVCacheLayout:
    """What a worker needs to build page pools identical to rank 0's (its own KV heads in them):
    the page tables rank 0 sends index these pools."""
    layer_windows: list[int | None]
    num_full_pages: int
    num_sliding_pages: int
    page_size: int
    dtype: torch.dtype


@dataclass(frozen=True)
class StepInputs:
    """One forward's packed batch, on the CPU for the trip."""
    input_ids: torch.Tensor
    positions: torch.Tensor
    paged: PagedBatch

    @classmethod
    def pack(cls, input_ids: torch.Tensor, positions: torch.Tensor, paged: PagedBatch) -> "StepInputs":
        return cls(input_ids.cpu(), positions.cpu(), _move(paged, torch.device("cpu")))

    def unpack(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, PagedBatch]:
        return self.input_ids.to(device), self.positions.to(device), _move(self.paged, device)


@dataclass(frozen=True)
class Stop:
    pass


def _move(paged: PagedBatch, device: torch.device) -> PagedBatch:
    return dataclasses.replace(paged, **{field.name: getattr(paged, field.name).to(device)
                                         for field in dataclasses.fields(paged)
                                         if isinstance(getattr(paged, field.name), torch.Tensor)})
