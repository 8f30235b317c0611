"""The messages rank 0 sends to worker ranks (besides the `StepPlan` of every step)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RunnerLayout:
    """What a worker needs to build a model runner like rank 0's: page pools of the same pages (its own KV
    heads in them) and a page-table mirror of the same shape, which rank 0's plans index."""
    layer_windows: list[int | None]
    num_full_pages: int
    num_sliding_pages: int
    page_size: int
    dtype: torch.dtype
    num_table_rows: int
    max_pages_per_seq: int


@dataclass(frozen=True)
class CaptureGraphs:
    """Capture decode graphs now, as rank 0 does: the ranks meet at the same all-reduces inside them."""
    max_batch_size: int


@dataclass(frozen=True)
class Stop:
    pass
