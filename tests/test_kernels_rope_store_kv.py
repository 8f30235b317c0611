"""Fused RoPE + KV-cache write against the model's rotary and the backend's store (interpreter child or GPU)."""
from __future__ import annotations

import pytest
import torch

from oss_serve.kernels.rope_store_kv import rope_store_kv, rope_store_kv_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = not torch.cuda.is_available()


def run_both(num_tokens: int, dtype: torch.dtype, cache_dtype: torch.dtype, slots: list[int], num_heads: int = 6,
             num_kv_heads: int = 3, head_dim: int = 12, scale: float = 1.0) -> None:
    gen = torch.Generator().manual_seed(num_tokens)
    qkv = scale * torch.randn(num_tokens, num_heads + 2 * num_kv_heads, head_dim, generator=gen)
    qkv = qkv.to(dtype).to(DEVICE)
    # Views into one projection output, as the model produces them: strided, not contiguous.
    q, k, v = qkv.split([num_heads, num_kv_heads, num_kv_heads], dim=1)
    angles = torch.rand(num_tokens, head_dim // 2, generator=gen) * 6.28
    cos, sin = (1.3 * angles.cos()).to(DEVICE), (1.3 * angles.sin()).to(DEVICE)
    caches = [torch.zeros(5, 4, num_kv_heads, head_dim, device=DEVICE).to(cache_dtype) for _ in range(4)]
    slot_tensor = torch.tensor(slots, dtype=torch.long, device=DEVICE)
    got_q = rope_store_kv(q, k, v, cos, sin, caches[0], caches[1], slot_tensor)
    want_q = rope_store_kv_reference(q, k, v, cos, sin, caches[2], caches[3], slot_tensor)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got_q, want_q, atol=tol, rtol=tol)
    for got, want in ((caches[0], caches[2]), (caches[1], caches[3])):
        torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("num_tokens", [0, 1, 7])
def test_fp32(num_tokens: int) -> None:
    run_both(num_tokens, torch.float32, torch.float32, [3, 19, 0, 7, 8, 12, 1][:num_tokens])


def test_bf16_and_skipped_slots() -> None:
    run_both(5, torch.bfloat16, torch.bfloat16, [4, -1, 9, -1, 2])


@pytest.mark.skipif(INTERPRETED, reason="the interpreter's fp32->fp8 casts are unreliable; checked on the GPU")
@pytest.mark.parametrize("cache_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_cache_saturates(cache_dtype: torch.dtype) -> None:
    run_both(6, torch.bfloat16, cache_dtype, [0, 5, 6, 11, -1, 19], scale=300.0)
