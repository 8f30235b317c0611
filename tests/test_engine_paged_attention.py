"""The torch paged-attention path against the reference math, over scattered pages."""
from __future__ import annotations

import pytest
import torch

from oss_serve.engine.paged_kv import paged_attention
from oss_serve.kernels.reference import reference_attention, store_kv


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn])
@pytest.mark.parametrize("window", [0, 5])
def test_paged_attention_matches_reference(kv_dtype: torch.dtype, window: int) -> None:
    torch.manual_seed(0)
    page_size, num_pages, hq, hkv, d = 4, 64, 4, 2, 8
    k_cache = torch.zeros(num_pages, page_size, hkv, d, dtype=kv_dtype)
    v_cache = torch.zeros_like(k_cache)
    # Mixed batch: a decode, a prefill chunk with a cached part, a fresh prefill, another decode.
    seq_lens = [9, 14, 6, 1]
    q_lens = [1, 5, 6, 1]
    pages = torch.randperm(num_pages)
    tables, next_page = [], 0
    for n in seq_lens:
        count = -(-n // page_size)
        tables.append(pages[next_page:next_page + count].tolist() + [0] * (4 - count))
        next_page += count
    table = torch.tensor(tables, dtype=torch.int32)
    keys = [torch.randn(n, hkv, d) for n in seq_lens]
    values = [torch.randn(n, hkv, d) for n in seq_lens]
    for b, n in enumerate(seq_lens):
        pos = torch.arange(n)
        slots = table[b, pos // page_size].long() * page_size + pos % page_size
        store_kv(k_cache, v_cache, slots, keys[b], values[b])
    q = torch.randn(sum(q_lens), hq, d)
    sinks = torch.randn(hq)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    out = paged_attention(q, k_cache, v_cache, table, cu, torch.tensor(seq_lens, dtype=torch.int32), sinks, 0.3, window)
    for b, n in enumerate(seq_lens):
        rows = slice(int(cu[b]), int(cu[b + 1]))
        stored_k = keys[b].to(kv_dtype).float()
        stored_v = values[b].to(kv_dtype).float()
        expected = reference_attention(q[rows], stored_k, stored_v, sinks, 0.3, torch.arange(n - q_lens[b], n),
                                       torch.arange(n), window or None)
        torch.testing.assert_close(out[rows], expected, atol=1e-5, rtol=1e-5)


def test_pages_outside_the_window_are_never_read() -> None:
    torch.manual_seed(1)
    k_cache = torch.randn(8, 4, 1, 4)
    v_cache = torch.randn(8, 4, 1, 4)
    table = torch.tensor([[0, 1, 2, 3]], dtype=torch.int32)
    args = (torch.randn(1, 2, 4),)
    cu, lens, sinks = torch.tensor([0, 1], dtype=torch.int32), torch.tensor([16], dtype=torch.int32), torch.zeros(2)
    before = paged_attention(*args, k_cache, v_cache, table, cu, lens, sinks, 0.5, 4)
    k_cache[0:3] = float("nan")  # pages 0..2 hold positions 0..11, all outside a window of 4 at position 15
    table_garbage = torch.tensor([[7, 7, 7, 3]], dtype=torch.int32)
    after = paged_attention(*args, k_cache, v_cache, table_garbage, cu, lens, sinks, 0.5, 4)
    torch.testing.assert_close(before, after)
