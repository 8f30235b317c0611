"""Paged attention kernel against the torch reference (CPU: in a TRITON_INTERPRET=1 child; GPU: natively)."""
from __future__ import annotations

import math

import pytest
import torch

from oss_serve.kernels.paged_attention import paged_attention, paged_attention_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
STALE_PAGE = 1 << 20  # an id far outside the cache: reading it would fault or return garbage


def make_batch(q_lens: list[int], seq_lens: list[int], *, page_size: int, num_kv_heads: int = 2, group: int = 4,
               head_dim: int = 16, kv_dtype: torch.dtype = torch.float32, q_dtype: torch.dtype = torch.float32,
               sliding_window: int = 0, seed: int = 0) -> dict:
    """Random q/KV with pages scattered through a cache whose unused pages hold NaN.

    Pages wholly before a sequence's window get the id of a NaN page or an out-of-range id, so a kernel
    that reads them fails the comparison (or the process)."""
    gen = torch.Generator().manual_seed(seed)
    num_heads = num_kv_heads * group
    pages_needed = [math.ceil(n / page_size) for n in seq_lens]
    num_pages = sum(pages_needed) + 3
    order = torch.randperm(num_pages, generator=gen)
    max_pages = max(pages_needed, default=1)
    page_table = torch.zeros(len(seq_lens), max(max_pages, 1), dtype=torch.int32)
    k_cache = torch.full((num_pages, page_size, num_kv_heads, head_dim), float("nan"))
    v_cache = torch.full_like(k_cache, float("nan"))
    next_page = 0
    for seq, (seq_len, q_len) in enumerate(zip(seq_lens, q_lens)):
        first_visible = max(0, seq_len - q_len - sliding_window + 1) if sliding_window else 0
        for logical in range(pages_needed[seq]):
            page = int(order[next_page])
            next_page += 1
            if (logical + 1) * page_size <= first_visible:
                # Never readable: alternate a NaN page and an id outside the cache.
                page_table[seq, logical] = STALE_PAGE if logical % 2 else int(order[-1])
                continue
            page_table[seq, logical] = page
            k_cache[page] = torch.randn(page_size, num_kv_heads, head_dim, generator=gen)
            v_cache[page] = torch.randn(page_size, num_kv_heads, head_dim, generator=gen)
    num_tokens = sum(q_lens)
    q = torch.randn(num_tokens, num_heads, head_dim, generator=gen).to(q_dtype)
    cu_q_lens = torch.tensor([0] + q_lens, dtype=torch.int32).cumsum(0).to(torch.int32)
    args = dict(q=q, k_cache=k_cache.to(kv_dtype), v_cache=v_cache.to(kv_dtype), page_table=page_table,
                cu_q_lens=cu_q_lens, seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
                sinks=torch.randn(num_heads, generator=gen), scale=head_dim ** -0.5, sliding_window=sliding_window)
    return {name: value.to(DEVICE) if isinstance(value, torch.Tensor) else value for name, value in args.items()}


def check(batch: dict, num_kv_splits: int | None = None, atol: float = 2e-5) -> None:
    expected = paged_attention_reference(**batch)
    actual = paged_attention(**batch, num_kv_splits=num_kv_splits)
    assert actual.dtype == batch["q"].dtype and actual.shape == batch["q"].shape
    assert torch.isfinite(actual.float()).all()
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=atol)


CASES = {
    # name: (q_lens, seq_lens, page_size, sliding_window)
    "decode_full_p16": ([1, 1, 1], [1, 17, 40], 16, 0),
    "decode_window_crossing_pages_p4": ([1, 1, 1], [5, 13, 30], 4, 8),
    "prefill_odd_p16": ([7, 20], [7, 20], 16, 0),
    "extend_prefix_window_p4": ([5, 19], [14, 40], 4, 6),
    "mixed_decode_extend_p1": ([1, 5, 1, 12], [9, 5, 30, 21], 1, 0),
    "mixed_window_p2": ([3, 1, 18], [3, 23, 25], 2, 5),
    # As many tokens as sequences, but not one each: the decode tiling (one token per block) must still hold.
    "tokens_equal_sequences_uneven": ([2, 0, 1], [6, 4, 9], 4, 3),
}


@pytest.mark.parametrize("name", CASES)
def test_matches_reference(name: str) -> None:
    q_lens, seq_lens, page_size, window = CASES[name]
    check(make_batch(q_lens, seq_lens, page_size=page_size, sliding_window=window, seed=len(name)))


@pytest.mark.parametrize("splits", [2, 4])
@pytest.mark.parametrize("window", [0, 7])
def test_split_kv_decode_and_extend(splits: int, window: int) -> None:
    check(make_batch([1, 1, 1], [3, 29, 50], page_size=4, sliding_window=window), num_kv_splits=splits)
    check(make_batch([4, 9], [4, 33], page_size=8, sliding_window=window, seed=1), num_kv_splits=splits)


@pytest.mark.parametrize("kv_dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16])
def test_low_precision_kv(kv_dtype: torch.dtype) -> None:
    check(make_batch([1, 6], [33, 6], page_size=16, kv_dtype=kv_dtype, sliding_window=4))


def test_bf16_queries() -> None:
    batch = make_batch([1, 9], [20, 9], page_size=8, q_dtype=torch.bfloat16, kv_dtype=torch.bfloat16)
    check(batch, atol=2e-2)


def test_odd_group_and_head_dim() -> None:
    check(make_batch([1, 7, 1], [12, 7, 3], page_size=4, num_kv_heads=2, group=3, head_dim=24, sliding_window=5))


def test_empty_batches() -> None:
    batch = make_batch([], [], page_size=4)
    assert paged_attention(**batch).shape == (0, 8, 16)
    idle = make_batch([0, 0], [3, 5], page_size=4)  # sequences with no new tokens
    assert paged_attention(**idle).shape == (0, 8, 16)


def test_sequence_without_new_tokens_between_others() -> None:
    check(make_batch([3, 0, 2], [3, 7, 9], page_size=4, sliding_window=3))
