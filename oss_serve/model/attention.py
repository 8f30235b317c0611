"""The attention backend interface.

The model hands each layer's q/k/v for the T tokens of the current batch (all sequences packed along
one token axis), before RoPE, and the tokens' cos/sin to a backend; the backend rotates q and k, stores
k/v (a GPU backend can fuse both into one kernel), and attends. It owns the KV cache and knows, from the
batch it was prepared for, which tokens belong to which sequence and at which positions.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class AttentionBackend(ABC):
    @abstractmethod
    def forward(self, layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, sinks: torch.Tensor, sliding_window: int | None, scale: float) -> torch.Tensor:
        """q [T, Hq, D] and k, v [T, Hkv, D] for the batch's new tokens, possibly strided views of one
        projection; q and k not yet rotated by cos, sin fp32 [T, D/2] (`kernels.reference.apply_rotary`).
        Returns [T, Hq, D] in q's dtype.

        `sliding_window` counts the keys a query sees including its own position (None: all earlier
        keys). `sinks` [Hq] are per-head logits that join the softmax denominator only.
        """
