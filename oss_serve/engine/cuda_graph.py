"""Decode steps captured as CUDA graphs, one per padded batch size, and replayed.

A decode step of a small batch is a few hundred tiny kernels; launching them one by one from Python
costs more than running them. Every input of the step lives in a static buffer sized for the largest
batch; a replay copies the step's inputs in, pads the unused rows so that they attend to one token
(read-only, through whatever valid page ids their table rows still hold) and write their k/v into a
scratch page no request owns, and returns the logits rows.
"""
from __future__ import annotations

import logging
import time

import torch

from oss_serve.attention.paged import PagedAttentionBackend, PagedBatch, PagedKVCache

logger = logging.getLogger(__name__)


def graph_batch_sizes(max_batch_size: int) -> list[int]:
    sizes = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 768, 1024]
    chosen = [s for s in sizes if s < max_batch_size] + [max_batch_size]
    return sorted(set(chosen))


class DecodeGraphs:
    def __init__(self, model: torch.nn.Module, cache: PagedKVCache, max_batch_size: int, max_pages: int,
                 device: torch.device) -> None:
        self.model, self.cache, self.device = model, cache, device
        self.max_pages = max_pages
        self.sizes = graph_batch_sizes(max_batch_size)
        self.max_batch_size = self.sizes[-1]
        n, ps = self.max_batch_size, cache.page_size
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.cu_q_lens = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.full_table = torch.zeros(n, max_pages, dtype=torch.int32, device=device)
        self.sliding_table = torch.zeros(n, max_pages, dtype=torch.int32, device=device)
        self.full_scratch_slot = cache.full_scratch_page * ps
        self.sliding_scratch_slot = cache.sliding_scratch_page * ps
        self.full_slots = torch.full((n,), self.full_scratch_slot, dtype=torch.long, device=device)
        self.sliding_slots = torch.full((n,), self.sliding_scratch_slot, dtype=torch.long, device=device)
        self.backend = PagedAttentionBackend(cache)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self._capture_all()

    def _batch_view(self, bs: int) -> PagedBatch:
        return PagedBatch(cu_q_lens=self.cu_q_lens[:bs + 1], seq_lens=self.seq_lens[:bs],
                          full_page_table=self.full_table[:bs], sliding_page_table=self.sliding_table[:bs],
                          full_slots=self.full_slots[:bs], sliding_slots=self.sliding_slots[:bs], layout=None)

    def _forward(self, bs: int) -> torch.Tensor:
        self.backend.prepare(self._batch_view(bs))
        hidden = self.model.forward(self.input_ids[:bs], self.positions[:bs], self.backend)
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def _capture_all(self) -> None:
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            # Largest first, so that smaller graphs reuse its memory from the shared pool.
            for bs in reversed(self.sizes):
                for _ in range(2):  # warm-up: Triton compiles and autotunes outside the capture
                    self._forward(bs)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    self.logits[bs] = self._forward(bs)
                self.graphs[bs] = graph
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        logger.info("Captured CUDA graphs for decode batch sizes %s in %.1f s", self.sizes,
                    time.perf_counter() - start)

    def fits(self, num_seqs: int, num_pages: int) -> bool:
        return num_seqs <= self.max_batch_size and num_pages <= self.max_pages

    def replay(self, input_ids: torch.Tensor, positions: torch.Tensor, seq_lens: torch.Tensor,
               full_table: torch.Tensor, sliding_table: torch.Tensor, full_slots: torch.Tensor,
               sliding_slots: torch.Tensor) -> torch.Tensor:
        """Host tensors for `n` one-token sequences in; logits [n, vocab] out (a view of a static buffer:
        read it before the next replay)."""
        n, width = input_ids.shape[0], full_table.shape[1]
        bs = next(s for s in self.sizes if s >= n)
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.seq_lens[:n].copy_(seq_lens, non_blocking=True)
        self.full_table[:n, :width].copy_(full_table, non_blocking=True)
        self.sliding_table[:n, :width].copy_(sliding_table, non_blocking=True)
        self.full_slots[:n].copy_(full_slots, non_blocking=True)
        self.sliding_slots[:n].copy_(sliding_slots, non_blocking=True)
        if n < bs:  # padding rows: one token at position 0, k/v written to the scratch pages
            self.positions[n:bs].zero_()
            self.seq_lens[n:bs].fill_(1)
            self.full_slots[n:bs].fill_(self.full_scratch_slot)
            self.sliding_slots[n:bs].fill_(self.sliding_scratch_slot)
        self.graphs[bs].replay()
        return self.logits[bs][:n]
