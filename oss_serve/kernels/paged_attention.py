"""Paged attention with per-head sinks, an optional sliding window and GQA, for decode and extend.

Layout: the batch's new query tokens are packed along one axis (sequence b owns tokens
cu_q_lens[b]..cu_q_lens[b+1]); its keys and values, this step's included, already sit in a paged
cache [num_pages, page_size, Hkv, D] addressed through page_table[b, logical_page].

One kernel serves both phases. A program owns one block of BLOCK_Q query tokens of one sequence and
all GROUP query heads of one KV head, so each key tile is read once per group instead of once per
query head, and a decode step (one token) still gives the dot a GROUP-row operand. For small
decode batches the key range is split over several programs (flash-decoding) whose partial softmax
states a second kernel merges, because a batch of one would otherwise occupy only Hkv programs.
"""
from __future__ import annotations

import math

import torch

from oss_serve.kernels import _support
from oss_serve.kernels.reference import reference_attention

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only install: the torch reference serves every call
    triton = tl = None


def paged_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                              page_table: torch.Tensor, cu_q_lens: torch.Tensor, seq_lens: torch.Tensor,
                              sinks: torch.Tensor, scale: float, sliding_window: int = 0) -> torch.Tensor:
    """The same contract as `paged_attention`, one sequence at a time through `reference_attention`."""
    out = torch.empty_like(q)
    page_size = k_cache.shape[1]
    bounds = cu_q_lens.tolist()
    for seq, seq_len in enumerate(seq_lens.tolist()):
        q_begin, q_end = bounds[seq], bounds[seq + 1]
        if q_end == q_begin:
            continue
        first_pos = seq_len - (q_end - q_begin)
        # Pages wholly before the window may hold stale ids: gather only positions some query can see.
        key_begin = max(0, first_pos - sliding_window + 1) if sliding_window else 0
        key_pos = torch.arange(key_begin, seq_len, device=q.device)
        pages = page_table[seq, key_pos // page_size].long()
        slots = key_pos % page_size
        out[q_begin:q_end] = reference_attention(
            q[q_begin:q_end], k_cache[pages, slots], v_cache[pages, slots], sinks, scale,
            torch.arange(first_pos, seq_len, device=q.device), key_pos, sliding_window or None)
    return out


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_table: torch.Tensor,
                    cu_q_lens: torch.Tensor, seq_lens: torch.Tensor, sinks: torch.Tensor, scale: float,
                    sliding_window: int = 0, *, num_kv_splits: int | None = None,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """q [T, Hq, D]; k_cache, v_cache [num_pages, page_size, Hkv, D] (bf16, fp16, fp32 or fp8);
    page_table int32 [B, max_pages]; cu_q_lens int32 [B + 1]; seq_lens int32 [B] (cached prefix plus
    new tokens); sinks fp32 [Hq]; sliding_window counts the current token, 0 means full attention.
    Returns [T, Hq, D] in q's dtype.

    `num_kv_splits` (default: chosen from the batch shape, never from tensor values, so the call can be
    captured in a CUDA graph) splits each query block's key range over that many programs.
    """
    if not _support.use_triton(q):
        result = paged_attention_reference(q, k_cache, v_cache, page_table, cu_q_lens, seq_lens, sinks, scale,
                                           sliding_window)
        return result if out is None else out.copy_(result)
    return _paged_attention_triton(q, k_cache, v_cache, page_table, cu_q_lens, seq_lens, sinks, scale,
                                   sliding_window, num_kv_splits, out)


def _choose_kv_splits(q: torch.Tensor, num_seqs: int, num_kv_heads: int, sliding_window: int,
                      block_n: int) -> int:
    """Split only decode batches (one token per sequence) too small to fill the GPU."""
    if q.shape[0] != num_seqs or not q.is_cuda:
        return 1
    programs = num_seqs * num_kv_heads
    target = 2 * _support.multiprocessor_count(q.device.index or 0)
    splits = min(32, triton.next_power_of_2(max(1, target // programs)))
    if sliding_window:  # a window holds only a few key tiles
        splits = min(splits, triton.next_power_of_2(math.ceil(sliding_window / block_n)))
    return splits


def _paged_attention_triton(q, k_cache, v_cache, page_table, cu_q_lens, seq_lens, sinks, scale, sliding_window,
                            num_kv_splits, out):
    num_tokens, num_heads, head_dim = q.shape
    num_seqs = seq_lens.shape[0]
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.empty_like(q)
    if num_tokens == 0 or num_seqs == 0:
        return out
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1 and q.stride(-1) == 1 and out.stride(-1) == 1
    for index in (page_table, cu_q_lens, seq_lens):
        assert index.dtype == torch.int32 and index.stride(-1) == 1, "index tensors: contiguous int32"

    # T == B is a decode step whenever every sequence has a new token; otherwise BLOCK_Q = 1 is merely slower.
    decode = num_tokens == num_seqs
    # Rows of a tile are (token, head in group): 128 on a GPU, 16 in the interpreter (it is slow per element).
    rows_wanted = 128 if q.is_cuda else 16
    block_q = 1 if decode else max(1, rows_wanted // triton.next_power_of_2(group))
    block_m = max(16, triton.next_power_of_2(block_q * group))
    block_n = 64 if q.is_cuda else 16
    block_d = max(16, triton.next_power_of_2(head_dim))
    splits = num_kv_splits or _choose_kv_splits(q, num_seqs, num_kv_heads, sliding_window, block_n)
    assert splits & (splits - 1) == 0, "num_kv_splits must be a power of two"
    # Enough query blocks for every sequence whatever its length (see the kernel's search).
    num_q_blocks = num_tokens // block_q + num_seqs
    dot_name = _support.dot_dtype_name(q.dtype)
    dot_dtype = {"fp32": tl.float32, "bf16": tl.bfloat16, "fp16": tl.float16}[dot_name]
    precision = _support.dot_input_precision(dot_name)

    if splits > 1:
        partial_max = torch.empty(num_tokens, num_heads, splits, dtype=torch.float32, device=q.device)
        partial_sum = torch.empty_like(partial_max)
        partial_acc = torch.empty(num_tokens, num_heads, splits, head_dim, dtype=torch.float32, device=q.device)
        target = partial_acc
    else:
        partial_max = partial_sum = None
        target = out
    paged_attention_kernel[(num_q_blocks, num_kv_heads, splits)](
        q, k_cache, v_cache, target, partial_max, partial_sum, page_table, cu_q_lens, seq_lens, sinks,
        scale * math.log2(math.e), num_seqs,
        q.stride(0), q.stride(1), target.stride(0), target.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), page_table.stride(0),
        PAGE_SIZE=k_cache.shape[1], SLIDING_WINDOW=sliding_window, GROUP=group, HEAD_DIM=head_dim,
        BLOCK_Q=block_q, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, NUM_SPLITS=splits,
        DOT_DTYPE=dot_dtype, INPUT_PRECISION=precision,
        num_warps=8 if block_m >= 128 else 4, num_stages=2 if q.is_cuda else 1,
    )
    if splits > 1:
        merge_kv_splits_kernel[(num_tokens, num_heads)](
            partial_max, partial_sum, partial_acc, sinks, out, out.stride(0), out.stride(1),
            NUM_SPLITS=splits, HEAD_DIM=head_dim, BLOCK_D=block_d, num_warps=1)
    return out


if triton is not None:
    @triton.jit(do_not_specialize=["num_seqs"])
    def paged_attention_kernel(
            q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, partial_max_ptr, partial_sum_ptr,
            page_table_ptr, cu_q_lens_ptr, seq_lens_ptr, sinks_ptr,
            scale_log2, num_seqs,
            stride_q_tok, stride_q_head, stride_out_tok, stride_out_head,
            stride_k_page, stride_k_slot, stride_k_head,
            stride_v_page, stride_v_slot, stride_v_head, stride_table_seq,
            PAGE_SIZE: tl.constexpr, SLIDING_WINDOW: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
            BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
            NUM_SPLITS: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
        """Grid (query blocks, KV heads, key-range splits). Rows of the tile are (query token, head in group).

        With NUM_SPLITS == 1 it writes the normalised output; otherwise each split writes its running
        max, sum and unnormalised accumulator (fp32) for `merge_kv_splits_kernel`.
        """
        block_id = tl.program_id(0)
        kv_head = tl.program_id(1)
        split = tl.program_id(2)

        # Sequence b owns query blocks [cu_q_lens[b] // BLOCK_Q + b, cu_q_lens[b+1] // BLOCK_Q + b + 1):
        # at least cdiv(q_len, BLOCK_Q) of them, found from device data alone (no host sync, graph-safe).
        # Binary search for the last sequence whose first block is <= block_id.
        lo = block_id * 0
        hi = lo + num_seqs - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            mid_first_block = tl.load(cu_q_lens_ptr + mid) // BLOCK_Q + mid
            lo = tl.where(mid_first_block <= block_id, mid, lo)
            hi = tl.where(mid_first_block <= block_id, hi, mid - 1)
        seq = lo
        q_begin = tl.load(cu_q_lens_ptr + seq)
        q_len = tl.load(cu_q_lens_ptr + seq + 1) - q_begin
        first_q = (block_id - (q_begin // BLOCK_Q + seq)) * BLOCK_Q
        if first_q >= q_len:
            return
        seq_len = tl.load(seq_lens_ptr + seq)
        prefix_len = seq_len - q_len

        rows = tl.arange(0, BLOCK_M)
        row_token = first_q + rows // GROUP
        row_head = kv_head * GROUP + rows % GROUP
        row_valid = (rows < BLOCK_Q * GROUP) & (row_token < q_len)
        row_pos = prefix_len + row_token
        dims = tl.arange(0, BLOCK_D)
        dim_valid = dims < HEAD_DIM

        q_offsets = (q_begin + row_token).to(tl.int64)[:, None] * stride_q_tok + row_head[:, None] * stride_q_head
        q = tl.load(q_ptr + q_offsets + dims[None, :], mask=row_valid[:, None] & dim_valid[None, :], other=0.0)
        q = q.to(tl.float32).to(DOT_DTYPE)

        # Keys this block can see: [key_begin, key_end). Split s takes its share in whole tiles.
        key_end = prefix_len + tl.minimum(first_q + BLOCK_Q, q_len)
        if SLIDING_WINDOW > 0:
            key_begin = tl.maximum(prefix_len + first_q - SLIDING_WINDOW + 1, 0)
        else:
            key_begin = prefix_len * 0
        tiles_begin = key_begin // BLOCK_N * BLOCK_N
        split_len = tl.cdiv(tl.cdiv(key_end - tiles_begin, NUM_SPLITS), BLOCK_N) * BLOCK_N
        split_begin = tiles_begin + split * split_len
        split_end = tl.minimum(split_begin + split_len, key_end)

        # The sink is the softmax's starting point: a finite running max from the start (no -inf - -inf),
        # and, when this program finishes the softmax, the first term of the denominator.
        LOG2E: tl.constexpr = 1.4426950408889634
        sink = tl.load(sinks_ptr + row_head, mask=row_valid, other=0.0).to(tl.float32) * LOG2E
        running_max = sink
        if NUM_SPLITS == 1:
            running_sum = tl.full([BLOCK_M], 1.0, tl.float32)
        else:
            running_sum = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

        table_row = page_table_ptr + seq.to(tl.int64) * stride_table_seq
        for tile_begin in range(split_begin, split_end, BLOCK_N):
            key_pos = tile_begin + tl.arange(0, BLOCK_N)
            key_valid = (key_pos >= key_begin) & (key_pos < split_end)
            # Never read a page id outside the visible range: pages before the window may be stale.
            page = tl.load(table_row + key_pos // PAGE_SIZE, mask=key_valid, other=0).to(tl.int64)
            slot = key_pos % PAGE_SIZE
            kv_mask = key_valid[:, None] & dim_valid[None, :]
            k = tl.load(k_cache_ptr + (page * stride_k_page + slot * stride_k_slot + kv_head * stride_k_head)[:, None]
                        + dims[None, :], mask=kv_mask, other=0.0)
            v = tl.load(v_cache_ptr + (page * stride_v_page + slot * stride_v_slot + kv_head * stride_v_head)[:, None]
                        + dims[None, :], mask=kv_mask, other=0.0)
            scores = tl.dot(q, tl.trans(k.to(tl.float32).to(DOT_DTYPE)), input_precision=INPUT_PRECISION)
            scores *= scale_log2
            visible = key_valid[None, :] & (key_pos[None, :] <= row_pos[:, None])
            if SLIDING_WINDOW > 0:
                visible &= key_pos[None, :] > row_pos[:, None] - SLIDING_WINDOW
            scores = tl.where(visible, scores, float("-inf"))
            new_max = tl.maximum(running_max, tl.max(scores, axis=1))
            rescale = tl.exp2(running_max - new_max)
            probs = tl.exp2(scores - new_max[:, None])
            running_sum = running_sum * rescale + tl.sum(probs, axis=1)
            acc = acc * rescale[:, None] + tl.dot(probs.to(DOT_DTYPE), v.to(tl.float32).to(DOT_DTYPE),
                                                  input_precision=INPUT_PRECISION)
            running_max = new_max

        store_mask = row_valid[:, None] & dim_valid[None, :]
        out_rows = (q_begin + row_token).to(tl.int64) * stride_out_tok + row_head * stride_out_head
        if NUM_SPLITS == 1:
            out = acc / running_sum[:, None]
            tl.store(out_ptr + out_rows[:, None] + dims[None, :], out.to(out_ptr.dtype.element_ty), mask=store_mask)
        else:
            # partial_acc is [T, Hq, NUM_SPLITS, HEAD_DIM]; partial max/sum are [T, Hq, NUM_SPLITS].
            tl.store(out_ptr + out_rows[:, None] + split * HEAD_DIM + dims[None, :], acc, mask=store_mask)
            stat_offsets = out_rows // HEAD_DIM + split
            tl.store(partial_max_ptr + stat_offsets, running_max, mask=row_valid)
            tl.store(partial_sum_ptr + stat_offsets, running_sum, mask=row_valid)

    @triton.jit
    def merge_kv_splits_kernel(partial_max_ptr, partial_sum_ptr, partial_acc_ptr, sinks_ptr, out_ptr,
                               stride_out_tok, stride_out_head,
                               NUM_SPLITS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
        """Grid (tokens, query heads): combine the splits' softmax states with the sink term."""
        token = tl.program_id(0).to(tl.int64)
        head = tl.program_id(1)
        num_heads = tl.num_programs(1)
        splits = tl.arange(0, NUM_SPLITS)
        dims = tl.arange(0, BLOCK_D)
        dim_valid = dims < HEAD_DIM
        stats = (token * num_heads + head) * NUM_SPLITS + splits
        # Every split's max started at the sink, so all are finite; a split with no keys has sum 0.
        split_max = tl.load(partial_max_ptr + stats)
        split_sum = tl.load(partial_sum_ptr + stats)
        split_acc = tl.load(partial_acc_ptr + stats[:, None] * HEAD_DIM + dims[None, :], mask=dim_valid[None, :],
                            other=0.0)
        sink = tl.load(sinks_ptr + head).to(tl.float32) * 1.4426950408889634
        total_max = tl.max(split_max, axis=0)
        weights = tl.exp2(split_max - total_max)
        denominator = tl.exp2(sink - total_max) + tl.sum(split_sum * weights, axis=0)
        out = tl.sum(split_acc * weights[:, None], axis=0) / denominator
        tl.store(out_ptr + token * stride_out_tok + head * stride_out_head + dims, out.to(out_ptr.dtype.element_ty),
                 mask=dim_valid)
