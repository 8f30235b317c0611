"""Plain-torch math the kernels are checked against, and the CPU path of the model uses.

Nothing here imports from the model or the engine, so kernels, model and engine can all build on it.
MXFP4: 32 fp4 (e2m1) values per block sharing one power-of-two scale (uint8, bias 127).
"""
from __future__ import annotations

import torch

FP4_VALUES = (+0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
SCALE_BIAS = 127
VALUES_PER_BLOCK = 32


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16,
                     rows_per_chunk: int = 4096) -> torch.Tensor:
    """blocks uint8 [..., nblocks, 16], scales uint8 [..., nblocks] -> [..., nblocks * 32].

    Byte j of a block holds element 2j in its low nibble and element 2j+1 in its high nibble.
    Works in row chunks so that the fp32 intermediates never hold the whole tensor.
    """
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != VALUES_PER_BLOCK // 2:
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)}")
    *lead, nblocks, _ = blocks.shape
    table = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    flat_blocks = blocks.reshape(-1, nblocks, 16)
    flat_scales = scales.reshape(-1, nblocks)
    out = torch.empty(flat_blocks.shape[0], nblocks * VALUES_PER_BLOCK, dtype=dtype, device=blocks.device)
    for start in range(0, flat_blocks.shape[0], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        packed = flat_blocks[rows].long()
        values = torch.stack([table[packed & 0x0F], table[packed >> 4]], dim=-1).flatten(-2)  # [r, nblocks, 32]
        exponent = flat_scales[rows].to(torch.int32) - SCALE_BIAS
        out[rows] = torch.ldexp(values, exponent[..., None].float()).flatten(-2).to(dtype)
    return out.reshape(*lead, nblocks * VALUES_PER_BLOCK)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, head_dim]; computed in fp32 and returned in x's dtype."""
    first, second = x.float().chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1).to(x.dtype)


def swiglu_clamped(gate_up: torch.Tensor, limit: float, alpha: float) -> torch.Tensor:
    """gate_up [..., 2I] with gate on even and up on odd columns -> [..., I]."""
    gate, up = gate_up[..., 0::2], gate_up[..., 1::2]
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return (up + 1) * gate * torch.sigmoid(alpha * gate)


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


def store_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor) -> None:
    """Write k, v [T, Hkv, D] at flat slots (page * page_size + offset) of the caches."""
    flat_k = k_cache.view(-1, *k_cache.shape[2:])
    flat_v = v_cache.view(-1, *v_cache.shape[2:])
    if k_cache.dtype != k.dtype:
        if k_cache.dtype.is_floating_point and k_cache.dtype.itemsize == 1:
            # fp8 has a narrow range; clamp so an outlier saturates instead of becoming NaN.
            limit = torch.finfo(k_cache.dtype).max
            k, v = k.clamp(-limit, limit), v.clamp(-limit, limit)
        k, v = k.to(k_cache.dtype), v.to(v_cache.dtype)
    # Plain indexed assignment: index_copy_ has no fp8 kernel on CPU.
    flat_k[slots] = k
    flat_v[slots] = v
