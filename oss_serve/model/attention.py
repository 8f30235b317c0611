"""The attention backend interface and the reference attention math every backend must match.

The model hands each layer's q/k/v for the T tokens of the current batch (all sequences packed along
one token axis), before RoPE, and the tokens' cos/sin to a backend; the backend rotates q and k, stores
k/v (a GPU backend can fuse both into one kernel), and attends. It owns the KV cache and knows, from the
batch it was prepared for, which tokens belong to which sequence and at which positions.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from oss_serve.kernels.reference import apply_rotary, reference_attention


class AttentionBackend(ABC):
    @abstractmethod
    def forward(self, layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, sinks: torch.Tensor, sliding_window: int | None, scale: float) -> torch.Tensor:
        """q [T, Hq, D] and k, v [T, Hkv, D] for the batch's new tokens, possibly strided views of one
        projection; q and k not yet rotated by cos, sin fp32 [T, D/2] (`model.rope.apply_rotary`).
        Returns [T, Hq, D] in q's dtype.

        `sliding_window` counts the keys a query sees including its own position (None: all earlier
        keys). `sinks` [Hq] are per-head logits that join the softmax denominator only.
        """



class ContiguousKVBackend(AttentionBackend):
    """Keeps each sequence's keys and values in one tensor per layer, appended every step."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self._keys: dict[int, list[torch.Tensor | None]] = {}
        self._values: dict[int, list[torch.Tensor | None]] = {}
        self._lengths: dict[int, int] = {}
        self._batch: list[tuple[int, int]] = []  # (sequence id, new tokens) in packed order

    def prepare(self, batch: list[tuple[int, int]]) -> torch.Tensor:
        """Declare the next forward's packed layout; returns the positions of its tokens."""
        self._batch = batch
        positions = []
        for seq_id, num_new in batch:
            start = self._lengths.setdefault(seq_id, 0)
            self._keys.setdefault(seq_id, [None] * self.num_layers)
            self._values.setdefault(seq_id, [None] * self.num_layers)
            positions.append(torch.arange(start, start + num_new))
        return torch.cat(positions)

    def finish_step(self) -> None:
        for seq_id, num_new in self._batch:
            self._lengths[seq_id] += num_new

    def release(self, seq_id: int) -> None:
        for store in (self._keys, self._values, self._lengths):
            store.pop(seq_id, None)

    def forward(self, layer_id, q, k, v, cos, sin, sinks, sliding_window, scale):
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        outputs = []
        offset = 0
        for seq_id, num_new in self._batch:
            seg = slice(offset, offset + num_new)
            offset += num_new
            past_k, past_v = self._keys[seq_id][layer_id], self._values[seq_id][layer_id]
            keys = k[seg] if past_k is None else torch.cat([past_k, k[seg]])
            values = v[seg] if past_v is None else torch.cat([past_v, v[seg]])
            self._keys[seq_id][layer_id], self._values[seq_id][layer_id] = keys, values
            total = keys.shape[0]
            k_pos = torch.arange(total, device=q.device)
            outputs.append(reference_attention(q[seg], keys, values, sinks, scale, k_pos[total - num_new:], k_pos,
                                               sliding_window))
        return torch.cat(outputs)
