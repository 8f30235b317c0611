"""Paged KV cache and the torch paged-attention backend (the CPU path and the reference for GPU kernels).

Layout, shared with the Triton kernels in `oss_serve.kernels`:
- per layer `k_cache`, `v_cache`: [num_pages, page_size, num_kv_heads, head_dim] in the KV dtype
  (the model dtype, or float8_e4m3fn / float8_e5m2 stored by plain cast and read by casting back);
- `page_table` int32 [batch, max_pages_per_seq]: logical page j of a sequence (positions
  j*page_size ..) -> physical page;
- `seq_lens` int32 [batch]: KV length including this step's new tokens;
- `cu_q_lens` int32 [batch+1]: offsets of each sequence's new tokens along the packed token axis;
  query i of sequence b sits at position seq_lens[b] - q_len[b] + i.

Sliding-window layers index a separate page pool; the table entries of pages wholly outside the
window may hold anything and are never read. RoPE and writing new k/v (`store_kv`, through a slot
mapping) are a step separate from attending (`paged_attention`); on GPU one kernel does that step
(`kernels.rope_store_kv`) and another attends.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from oss_serve.kernels.reference import apply_rotary, store_kv
from oss_serve.model.attention import AttentionBackend

# Query rows attended at once during prefill: bounds the [heads, rows, keys] score tensor.
_PREFILL_QUERY_BLOCK = 256


@dataclass(frozen=True)
class BatchLayout:
    """Host-side copy of cu_q_lens / seq_lens as Python ints, so the CPU path can plan without syncs."""
    q_lens: tuple[int, ...]
    seq_lens: tuple[int, ...]
    q_starts: tuple[int, ...]

    @classmethod
    def from_tensors(cls, cu_q_lens: torch.Tensor, seq_lens: torch.Tensor) -> BatchLayout:
        cu = cu_q_lens.tolist()
        return cls(tuple(cu[i + 1] - cu[i] for i in range(len(cu) - 1)), tuple(seq_lens.tolist()), tuple(cu[:-1]))


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_table: torch.Tensor,
                    cu_q_lens: torch.Tensor, seq_lens: torch.Tensor, sinks: torch.Tensor, scale: float,
                    sliding_window: int = 0, layout: BatchLayout | None = None) -> torch.Tensor:
    """Causal GQA attention with sinks over a paged cache that already holds this step's k/v.

    `sliding_window` counts visible keys including the query's own position; 0 means full attention.
    `layout` may carry the host copy of cu_q_lens / seq_lens to skip reading them back.
    Returns [T, Hq, D] in q's dtype.
    """
    layout = layout or BatchLayout.from_tensors(cu_q_lens, seq_lens)
    out = torch.empty_like(q)
    decode_rows = [b for b, n in enumerate(layout.q_lens) if n == 1]
    if decode_rows:
        _attend_decodes(q, k_cache, v_cache, page_table, layout, decode_rows, sinks, scale, sliding_window, out)
    for b, n in enumerate(layout.q_lens):
        if n > 1:
            _attend_one_sequence(q, k_cache, v_cache, page_table[b], layout.q_starts[b], n, layout.seq_lens[b],
                                 sinks, scale, sliding_window, out)
    return out


def _first_visible_key(first_query_pos: int, sliding_window: int) -> int:
    return max(0, first_query_pos - sliding_window + 1) if sliding_window else 0


def _softmax_with_sinks(scores: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """scores [..., Hkv, G, Q, K] fp32 -> probabilities over K; the sink only joins the denominator."""
    sink = sinks.float().view(*scores.shape[-4:-2], 1, 1).expand(*scores.shape[:-1], 1)
    return torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]


def _attend_decodes(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_table: torch.Tensor,
                    layout: BatchLayout, rows: list[int], sinks: torch.Tensor, scale: float, sliding_window: int,
                    out: torch.Tensor) -> None:
    """All one-token queries at once: gather each sequence's visible pages into a padded batch."""
    page_size = k_cache.shape[1]
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    lens = [layout.seq_lens[b] for b in rows]
    first_pages = [_first_visible_key(n - 1, sliding_window) // page_size for n in lens]
    last_pages = [(n - 1) // page_size for n in lens]
    num_pages = max(last - first for first, last in zip(first_pages, last_pages)) + 1
    device = q.device
    rows_t = torch.tensor(rows, device=device)
    first_t = torch.tensor(first_pages, device=device)
    lens_t = torch.tensor(lens, device=device)
    logical = first_t[:, None] + torch.arange(num_pages, device=device)[None, :]  # [B, P]
    logical_clamped = torch.minimum(logical, torch.tensor(last_pages, device=device)[:, None])
    physical = page_table[rows_t[:, None], logical_clamped].long()
    keys = k_cache[physical].view(len(rows), num_pages * page_size, num_kv_heads, head_dim).float()
    values = v_cache[physical].view(len(rows), num_pages * page_size, num_kv_heads, head_dim).float()
    key_pos = (logical[:, :, None] * page_size + torch.arange(page_size, device=device)).view(len(rows), -1)
    query_pos = lens_t - 1
    visible = key_pos <= query_pos[:, None]
    if sliding_window:
        visible &= key_pos > (query_pos - sliding_window)[:, None]
    group = q.shape[1] // num_kv_heads
    qf = q[[layout.q_starts[b] for b in rows]].float().view(len(rows), num_kv_heads, group, 1, head_dim)
    scores = torch.matmul(qf, keys.permute(0, 2, 3, 1)[:, :, None]) * scale  # [B, Hkv, G, 1, K]
    scores = scores.masked_fill(~visible[:, None, None, None, :], float("-inf"))
    probs = _softmax_with_sinks(scores, sinks)
    result = torch.matmul(probs, values.permute(0, 2, 1, 3)[:, :, None])  # [B, Hkv, G, 1, D]
    out[[layout.q_starts[b] for b in rows]] = result.view(len(rows), -1, head_dim).to(out.dtype)


def _attend_one_sequence(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, table_row: torch.Tensor,
                         q_start: int, q_len: int, seq_len: int, sinks: torch.Tensor, scale: float,
                         sliding_window: int, out: torch.Tensor) -> None:
    """A multi-token query span (a prefill chunk) of one sequence, in query blocks."""
    page_size, num_kv_heads, head_dim = k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
    first_query_pos = seq_len - q_len
    first_page = _first_visible_key(first_query_pos, sliding_window) // page_size
    last_page = (seq_len - 1) // page_size
    physical = table_row[first_page:last_page + 1].long()
    key_start = first_page * page_size
    keys = k_cache[physical].view(-1, num_kv_heads, head_dim)[:seq_len - key_start].float()
    values = v_cache[physical].view(-1, num_kv_heads, head_dim)[:seq_len - key_start].float()
    key_pos = torch.arange(key_start, seq_len, device=q.device)
    group = q.shape[1] // num_kv_heads
    keys_t = keys.permute(1, 2, 0)[:, None]  # [Hkv, 1, D, K]
    values_t = values.permute(1, 0, 2)[:, None]  # [Hkv, 1, K, D]
    for block in range(0, q_len, _PREFILL_QUERY_BLOCK):
        n = min(_PREFILL_QUERY_BLOCK, q_len - block)
        rows = slice(q_start + block, q_start + block + n)
        query_pos = torch.arange(first_query_pos + block, first_query_pos + block + n, device=q.device)
        qf = q[rows].float().view(n, num_kv_heads, group, head_dim).permute(1, 2, 0, 3)  # [Hkv, G, n, D]
        scores = torch.matmul(qf, keys_t) * scale  # [Hkv, G, n, K]
        visible = key_pos[None, :] <= query_pos[:, None]
        if sliding_window:
            visible &= key_pos[None, :] > query_pos[:, None] - sliding_window
        scores = scores.masked_fill(~visible, float("-inf"))
        probs = _softmax_with_sinks(scores, sinks)
        result = torch.matmul(probs, values_t)  # [Hkv, G, n, D]
        out[rows] = result.permute(2, 0, 1, 3).reshape(n, -1, head_dim).to(out.dtype)


class PagedKVCache:
    """The KV tensors of every layer: full-attention layers index the full pool, sliding layers the sliding pool."""

    def __init__(self, layer_windows: list[int | None], num_full_pages: int, num_sliding_pages: int, page_size: int,
                 num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device | str) -> None:
        self.page_size = page_size
        self.dtype = dtype
        self.layer_windows = layer_windows
        # One extra page per pool that no request ever owns: padded rows of a CUDA-graph batch write there.
        self.full_scratch_page, self.sliding_scratch_page = num_full_pages, num_sliding_pages
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        for window in layer_windows:
            pages = 1 + (num_full_pages if window is None else num_sliding_pages)
            # Zero-filled so that never-written slots read as finite numbers: masked scores become
            # -inf, but a NaN value times a zero probability would still poison the output.
            self.k.append(torch.zeros(pages, page_size, num_kv_heads, head_dim, dtype=dtype, device=device))
            self.v.append(torch.zeros(pages, page_size, num_kv_heads, head_dim, dtype=dtype, device=device))

    @staticmethod
    def bytes_per_page(page_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        """Bytes one page costs on one layer, keys and values together."""
        return 2 * page_size * num_kv_heads * head_dim * dtype.itemsize


@dataclass
class PagedBatch:
    """One forward's layout, prepared by the model runner."""
    cu_q_lens: torch.Tensor
    seq_lens: torch.Tensor
    full_page_table: torch.Tensor
    sliding_page_table: torch.Tensor
    full_slots: torch.Tensor  # int64 [T]: flat slot of each new token in the full pool
    sliding_slots: torch.Tensor  # int64 [T]: the same in the sliding pool
    layout: BatchLayout | None  # None inside CUDA graphs, where only the device tensors are used


class PagedAttentionBackend(AttentionBackend):
    """Rotates q and k, writes each layer's new k/v into the paged cache, then attends over it."""

    def __init__(self, cache: PagedKVCache, use_triton: bool = True) -> None:
        self.cache = cache
        # The Triton kernel runs on CUDA tensors unless the torch path was asked for.
        self.use_triton = use_triton
        self.batch: PagedBatch | None = None

    def prepare(self, batch: PagedBatch) -> None:
        self.batch = batch

    def forward(self, layer_id, q, k, v, cos, sin, sinks, sliding_window, scale):
        batch = self.batch
        assert batch is not None, "prepare() the backend before a forward"
        k_cache, v_cache = self.cache.k[layer_id], self.cache.v[layer_id]
        if sliding_window is None:
            slots, table = batch.full_slots, batch.full_page_table
        else:
            slots, table = batch.sliding_slots, batch.sliding_page_table
        if q.is_cuda and self.use_triton:
            from oss_serve.kernels.paged_attention import paged_attention as paged_attention_gpu
            from oss_serve.kernels.rope_store_kv import rope_store_kv

            q = rope_store_kv(q, k, v, cos, sin, k_cache, v_cache, slots)
            return paged_attention_gpu(q, k_cache, v_cache, table, batch.cu_q_lens, batch.seq_lens, sinks, scale,
                                       sliding_window or 0)
        q = apply_rotary(q, cos, sin)
        store_kv(k_cache, v_cache, slots, apply_rotary(k, cos, sin), v)
        return paged_attention(q, k_cache, v_cache, table, batch.cu_q_lens, batch.seq_lens, sinks, scale,
                               sliding_window or 0, layout=batch.layout)
