"""Decode steps captured as CUDA graphs, one per padded batch size, and replayed.

A decode step of a small batch is a few hundred tiny kernels; launching them one by one from Python
costs more than running them. The per-sequence inputs of a step (token, position, the two KV slots and
the sequence's page-table row) live in one static int64 block, so a replay is one host-to-device copy
plus the graph: page tables are gathered from the runner's device mirror and sequence lengths derived
from positions inside the graph. Padding rows attend to one token through row 0 of the mirror (whatever
it holds are valid page ids) and write their k/v into a scratch page no request owns.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from oss_serve.engine.page_table import PageTableMirror
from oss_serve.engine.paged_kv import PagedAttentionBackend, PagedBatch, PagedKVCache

if TYPE_CHECKING:
    from oss_serve.engine.model_runner import PendingInputs

logger = logging.getLogger(__name__)


def graph_batch_sizes(max_batch_size: int) -> list[int]:
    sizes = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 768, 1024]
    chosen = [s for s in sizes if s < max_batch_size] + [max_batch_size]
    return sorted(set(chosen))


class DecodeGraphs:
    def __init__(self, model: torch.nn.Module, cache: PagedKVCache, page_tables: PageTableMirror,
                 max_batch_size: int, device: torch.device, with_logits: bool = True) -> None:
        self.model, self.cache, self.page_tables, self.device = model, cache, page_tables, device
        self.with_logits = with_logits  # tensor-parallel workers capture the layers alone
        self.sizes = graph_batch_sizes(max_batch_size)
        self.max_batch_size = n = self.sizes[-1]
        ps = cache.page_size
        self.padding = torch.tensor([0, 0, cache.full_scratch_page * ps, cache.sliding_scratch_page * ps, 0])
        self.inputs = self.padding[:, None].repeat(1, n).to(device)
        # Pinned, so the copy is one DMA; rewritten once `staged` says the last copy out of it is done.
        self.staging = self.padding[:, None].repeat(1, n).pin_memory()
        self.staged = torch.cuda.Event()
        self.cu_q_lens = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.backend = PagedAttentionBackend(cache)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # logits (or hidden states, without the lm_head)
        self._capture_all()

    def _forward(self, bs: int) -> torch.Tensor:
        tokens, positions, full_slots, sliding_slots, rows = self.inputs[:, :bs]
        self.backend.prepare(PagedBatch(
            cu_q_lens=self.cu_q_lens[:bs + 1], seq_lens=(positions + 1).to(torch.int32),
            full_page_table=self.page_tables.full[rows], sliding_page_table=self.page_tables.sliding[rows],
            full_slots=full_slots, sliding_slots=sliding_slots, layout=None))
        hidden = self.model.forward(tokens, positions, self.backend)
        return self.model.compute_logits(hidden) if self.with_logits else hidden

    @torch.inference_mode()
    def _capture_all(self) -> None:
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            # Largest first, so that smaller graphs reuse its memory from the shared pool.
            for bs in reversed(self.sizes):
                for _ in range(2):  # warm-up: Triton compiles, and small linears pick a kernel, outside the capture
                    self._forward(bs)
                graph = torch.cuda.CUDAGraph()
                # thread_local: under tensor parallelism NCCL's watchdog thread queries its events meanwhile.
                with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                    self.outputs[bs] = self._forward(bs)
                self.graphs[bs] = graph
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        logger.info("Captured CUDA graphs for decode batch sizes %s in %.1f s", self.sizes,
                    time.perf_counter() - start)

    def fits(self, num_seqs: int) -> bool:
        return num_seqs <= self.max_batch_size

    def replay(self, columns: torch.Tensor, table_rows: list[int], pending: PendingInputs | None = None,
               drawn: torch.Tensor | None = None) -> torch.Tensor:
        """columns: int64 [4, n] host rows (token, position, full slot, sliding slot) of `n` one-token
        sequences whose pages the mirror holds in `table_rows`; `pending` fills in tokens still on the device
        (in `drawn`). Returns logits [n, vocab]: a view of a static buffer, to be read (queued) before the
        next replay."""
        n = columns.shape[1]
        bs = next(s for s in self.sizes if s >= n)
        self.staged.synchronize()  # with the overlapped schedule the last step's copy may still be queued
        self.staging[:4, :n] = columns
        self.staging[4, :n] = torch.as_tensor(table_rows)
        self.staging[:, n:bs] = self.padding[:, None]
        self.inputs.copy_(self.staging, non_blocking=True)  # whole (contiguous): at most a few KiB
        self.staged.record()
        if pending is not None:
            pending.fill(self.inputs[0], drawn)
        self.graphs[bs].replay()
        return self.outputs[bs][:n]
