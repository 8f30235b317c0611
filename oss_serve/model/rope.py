"""Rotary position embedding with YaRN scaling, half-split layout (first half / second half)."""
from __future__ import annotations

import math

import torch

from oss_serve.model.config import ModelConfig


def yarn_inv_freq(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim/2] and the attention factor that scales both cos and sin."""
    dim, base = config.head_dim, config.rope_theta
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    if config.rope_factor <= 1.0:
        return 1.0 / pos_freqs, 1.0
    factor = config.rope_factor

    def correction_dim(num_rotations: float) -> float:
        return dim * math.log(config.rope_original_max_position / (num_rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(config.rope_beta_fast), correction_dim(config.rope_beta_slow)
    if config.rope_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    # Low-frequency dimensions are interpolated (divided by factor); high-frequency ones kept as they are.
    extrapolated_share = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * ramp + (1.0 / pos_freqs) * extrapolated_share
    return inv_freq, 0.1 * math.log(factor) + 1.0


class RotaryEmbedding(torch.nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        inv_freq, self.attention_factor = yarn_inv_freq(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 cos and sin [T, head_dim/2] for the given absolute positions."""
        angles = positions.float()[:, None] * self.inv_freq[None, :]
        return angles.cos() * self.attention_factor, angles.sin() * self.attention_factor


