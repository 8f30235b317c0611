"""RoPE on q and k fused with writing k and v into the paged KV cache, one launch per layer.

Unfused, a decode step spends about a dozen tiny kernels per layer on this (rotate halves, concatenate,
cast, clamp for fp8, two indexed writes); each is launch- and latency-bound, and 24 layers of them cost a
visible share of a batch-1 token. One program per token reads q, k, v once and writes q_rot and the cache.
Slots < 0 are skipped. The paged backend calls it on GPU (`PagedAttentionBackend.forward`), where every
slot is valid: padded rows of a CUDA-graph batch write to a scratch page instead.
"""
from __future__ import annotations

import torch

from oss_serve.kernels import _support

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only install: the torch reference serves every call
    triton = tl = None


def rope_store_kv_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                            k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The model's `apply_rotary` on q and k, then the backend's `store_kv` of rotated k and v."""
    # Imported here: those modules may import this one to pick their GPU path.
    from oss_serve.kernels.reference import apply_rotary, store_kv

    q_rot = apply_rotary(q, cos, sin)
    k_rot = apply_rotary(k, cos, sin)
    keep = slots >= 0
    store_kv(k_cache, v_cache, slots[keep], k_rot[keep], v[keep])
    return q_rot


def rope_store_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """q [T, Hq, D], k and v [T, Hkv, D]; cos, sin fp32 [T, D/2] (attention factor included, half-split
    layout); caches [num_pages, page_size, Hkv, D] in any float dtype (fp8 by clamped cast); slots int [T]
    flat (page * page_size + offset), negative = skip. Returns rotated q; writes rotated k and v."""
    if not _support.use_triton(q):
        return rope_store_kv_reference(q, k, v, cos, sin, k_cache, v_cache, slots)
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    q_rot = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # contiguous, whatever q's strides
    if num_tokens == 0:
        return q_rot
    assert q.stride(2) == 1 and k.stride(2) == 1 and v.stride(2) == 1 and cos.stride(1) == 1 and sin.stride(1) == 1
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    fp8_cache = k_cache.dtype.itemsize == 1
    rope_store_kv_kernel[(num_tokens,)](
        q, k, v, cos, sin, k_cache, v_cache, slots, q_rot,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos.stride(0), sin.stride(0),
        torch.finfo(k_cache.dtype).max if fp8_cache else 0.0,
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HALF_DIM=head_dim // 2,
        BLOCK_HEADS=triton.next_power_of_2(max(num_heads, num_kv_heads)),
        BLOCK_HALF=triton.next_power_of_2(head_dim // 2), CLAMP=fp8_cache, num_warps=4 if q.is_cuda else 1)
    return q_rot


if triton is not None:
    @triton.jit
    def _rotate_heads(src_ptr, stride_src_head, dst_ptr, stride_dst_head, num_heads, cos, sin, clamp_limit,
                      HALF_DIM: tl.constexpr, BLOCK_HEADS: tl.constexpr, BLOCK_HALF: tl.constexpr,
                      CLAMP: tl.constexpr):
        """dst[h] = rotate(src[h]) for the heads of one token; half-split layout, fp32 math."""
        heads = tl.arange(0, BLOCK_HEADS)
        dims = tl.arange(0, BLOCK_HALF)
        mask = (heads < num_heads)[:, None] & (dims < HALF_DIM)[None, :]
        first_offsets = heads[:, None] * stride_src_head + dims[None, :]
        first = tl.load(src_ptr + first_offsets, mask=mask, other=0.0).to(tl.float32)
        second = tl.load(src_ptr + first_offsets + HALF_DIM, mask=mask, other=0.0).to(tl.float32)
        new_first = first * cos[None, :] - second * sin[None, :]
        new_second = second * cos[None, :] + first * sin[None, :]
        if CLAMP:
            new_first = tl.minimum(tl.maximum(new_first, -clamp_limit), clamp_limit)
            new_second = tl.minimum(tl.maximum(new_second, -clamp_limit), clamp_limit)
        # Round to the source dtype first, as the unfused path does before its cast to the cache dtype.
        new_first = new_first.to(src_ptr.dtype.element_ty)
        new_second = new_second.to(src_ptr.dtype.element_ty)
        dst_offsets = heads[:, None] * stride_dst_head + dims[None, :]
        tl.store(dst_ptr + dst_offsets, new_first.to(dst_ptr.dtype.element_ty), mask=mask)
        tl.store(dst_ptr + dst_offsets + HALF_DIM, new_second.to(dst_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def rope_store_kv_kernel(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, k_cache_ptr, v_cache_ptr, slots_ptr, q_out_ptr,
                             stride_q_tok, stride_q_head, stride_k_tok, stride_k_head, stride_v_tok, stride_v_head,
                             stride_cos_tok, stride_sin_tok, clamp_limit,
                             NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HALF_DIM: tl.constexpr,
                             BLOCK_HEADS: tl.constexpr, BLOCK_HALF: tl.constexpr, CLAMP: tl.constexpr):
        token = tl.program_id(0).to(tl.int64)
        dims = tl.arange(0, BLOCK_HALF)
        cos = tl.load(cos_ptr + token * stride_cos_tok + dims, mask=dims < HALF_DIM, other=0.0).to(tl.float32)
        sin = tl.load(sin_ptr + token * stride_sin_tok + dims, mask=dims < HALF_DIM, other=0.0).to(tl.float32)
        _rotate_heads(q_ptr + token * stride_q_tok, stride_q_head, q_out_ptr + token * NUM_HEADS * 2 * HALF_DIM,
                      2 * HALF_DIM, NUM_HEADS, cos, sin, clamp_limit, HALF_DIM, BLOCK_HEADS, BLOCK_HALF, False)
        slot = tl.load(slots_ptr + token).to(tl.int64)
        if slot >= 0:
            row = slot * NUM_KV_HEADS * 2 * HALF_DIM  # caches are contiguous: a slot is [Hkv, D]
            _rotate_heads(k_ptr + token * stride_k_tok, stride_k_head, k_cache_ptr + row, 2 * HALF_DIM,
                          NUM_KV_HEADS, cos, sin, clamp_limit, HALF_DIM, BLOCK_HEADS, BLOCK_HALF, CLAMP)
            heads = tl.arange(0, BLOCK_HEADS)
            full_dims = tl.arange(0, 2 * BLOCK_HALF)
            mask = (heads < NUM_KV_HEADS)[:, None] & (full_dims < 2 * HALF_DIM)[None, :]
            v = tl.load(v_ptr + token * stride_v_tok + heads[:, None] * stride_v_head + full_dims[None, :], mask=mask,
                        other=0.0)
            if CLAMP:
                v = tl.minimum(tl.maximum(v.to(tl.float32), -clamp_limit), clamp_limit).to(v_ptr.dtype.element_ty)
            tl.store(v_cache_ptr + row + heads[:, None] * 2 * HALF_DIM + full_dims[None, :],
                     v.to(v_cache_ptr.dtype.element_ty), mask=mask)
