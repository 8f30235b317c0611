"""The attention backend interface and the reference attention math every backend must match.

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
        projection; q and k not yet rotated by cos, sin fp32 [T, D/2] (`model.rope.apply_rotary`).
        Returns [T, Hq, D] in q's dtype.

        `sliding_window` counts the keys a query sees including its own position (None: all earlier
        keys). `sinks` [Hq] are per-head logits that join the softmax denominator only.
        """


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, scale: float,
                        q_positions: torch.Tensor, k_positions: torch.Tensor,
                        sliding_window: int | None) -> torch.Tensor:
    """Causal GQA attention with sinks and an optional sliding window, for one sequence, in fp32.

    q [Tq, Hq, D], k/v [Tk, Hkv, D], positions are absolute token positions. Returns [Tq, Hq, D].
    """
    num_q, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads
    qf = q.float().view(num_q, num_kv_heads, group, head_dim)
    scores = torch.einsum("qhgd,khd->hgqk", qf, k.float()) * scale
    visible = k_positions[None, :] <= q_positions[:, None]
    if sliding_window is not None:
        visible &= k_positions[None, :] > q_positions[:, None] - sliding_window
    scores = scores.masked_fill(~visible, float("-inf"))
    # The sink is a logit with no value vector: it only enlarges the denominator.
    sink_logits = sinks.float().view(num_kv_heads, group, 1, 1).expand(-1, -1, num_q, 1)
    logits = torch.cat([scores, sink_logits], dim=-1)
    probs = torch.softmax(logits, dim=-1)[..., :-1]
    out = torch.einsum("hgqk,khd->qhgd", probs, v.float())
    return out.reshape(num_q, num_heads, head_dim).to(q.dtype)
