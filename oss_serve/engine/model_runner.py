"""Runs one scheduled step on the model: packs the batch, lays out the paged cache, samples."""
from __future__ import annotations

import torch

from oss_serve.attention.paged import BatchLayout, PagedAttentionBackend, PagedBatch, PagedKVCache
from oss_serve.engine.outputs import TokenLogprob
from oss_serve.engine.radix_cache import NO_PAGE
from oss_serve.engine.request import Request
from oss_serve.engine.sampler import sample
from oss_serve.engine.scheduler import ScheduledSeq


class ModelRunner:
    def __init__(self, model: torch.nn.Module, cache: PagedKVCache, device: torch.device,
                 attention_backend: str = "auto") -> None:
        self.model = model
        self.cache = cache
        self.device = device
        self.page_size = cache.page_size
        self.backend = PagedAttentionBackend(cache, use_triton=attention_backend != "torch")
        self.graphs = None  # DecodeGraphs once enable_cuda_graphs() ran

    def _prepare(self, batch: list[ScheduledSeq]) -> tuple[torch.Tensor, torch.Tensor, PagedBatch]:
        ps = self.page_size
        input_ids: list[int] = []
        q_lens: list[int] = []
        seq_lens: list[int] = []
        starts: list[int] = []
        for seq in batch:
            request, start = seq.request, seq.request.num_computed
            input_ids.extend(request.token_ids[start:start + seq.num_new_tokens])
            q_lens.append(seq.num_new_tokens)
            seq_lens.append(start + seq.num_new_tokens)
            starts.append(start)
        num_pages = max(-(-n // ps) for n in seq_lens)
        full_rows = [seq.request.full_pages[:num_pages] + [0] * (num_pages - len(seq.request.full_pages[:num_pages]))
                     for seq in batch]
        sliding_rows = [[p if p != NO_PAGE else 0 for p in seq.request.sliding_pages[:num_pages]] for seq in batch]
        sliding_rows = [row + [0] * (num_pages - len(row)) for row in sliding_rows]
        cu = [0]
        for n in q_lens:
            cu.append(cu[-1] + n)
        full_table = torch.tensor(full_rows, dtype=torch.int32)
        sliding_table = torch.tensor(sliding_rows, dtype=torch.int32)
        if len(input_ids) == len(batch):  # all decodes: one position per sequence
            positions = torch.tensor(starts, dtype=torch.long)
            row_of_token = torch.arange(len(batch))
        else:
            positions = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, q_lens)])
            row_of_token = torch.repeat_interleave(torch.arange(len(batch)), torch.tensor(q_lens))
        logical = positions // ps
        offset = positions % ps
        full_slots = full_table[row_of_token, logical].long() * ps + offset
        sliding_slots = sliding_table[row_of_token, logical].long() * ps + offset
        # Host tensors; `_to_device` moves them unless a CUDA graph takes them as they are.
        paged = PagedBatch(
            cu_q_lens=torch.tensor(cu, dtype=torch.int32), seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            full_page_table=full_table, sliding_page_table=sliding_table,
            full_slots=full_slots, sliding_slots=sliding_slots,
            layout=BatchLayout(tuple(q_lens), tuple(seq_lens), tuple(cu[:-1])),
        )
        return torch.tensor(input_ids, dtype=torch.long), positions, paged

    def _to_device(self, input_ids: torch.Tensor, positions: torch.Tensor, paged: PagedBatch
                   ) -> tuple[torch.Tensor, torch.Tensor, PagedBatch]:
        device = self.device
        if device.type == "cpu":
            return input_ids, positions, paged
        moved = PagedBatch(paged.cu_q_lens.to(device), paged.seq_lens.to(device),
                           paged.full_page_table.to(device), paged.sliding_page_table.to(device),
                           paged.full_slots.to(device), paged.sliding_slots.to(device), paged.layout)
        return input_ids.to(device), positions.to(device), moved

    def enable_cuda_graphs(self, max_batch_size: int, max_pages: int) -> None:
        from oss_serve.engine.cuda_graph import DecodeGraphs

        self.graphs = DecodeGraphs(self.model, self.cache, max_batch_size, max_pages, self.device)

    @torch.inference_mode()
    def step(self, batch: list[ScheduledSeq], sample_rows: list[int]
             ) -> tuple[list[int], list[TokenLogprob | None]]:
        """Run the batch; sample the next token for the batch entries listed in `sample_rows`
        (those whose step computes their last known token)."""
        input_ids, positions, paged = self._prepare(batch)
        all_decode = len(input_ids) == len(batch)
        if self.graphs is not None and all_decode and self.graphs.fits(len(batch), paged.full_page_table.shape[1]):
            logits = self.graphs.replay(input_ids, positions, paged.seq_lens, paged.full_page_table,
                                        paged.sliding_page_table, paged.full_slots, paged.sliding_slots)
            logits = logits[sample_rows]
        else:
            input_ids, positions, paged = self._to_device(input_ids, positions, paged)
            self.backend.prepare(paged)
            hidden = self.model.forward(input_ids, positions, self.backend)
            if not sample_rows:
                return [], []  # a step of prefill chunks only: no logits needed
            last_token_rows = [paged.layout.q_starts[i] + paged.layout.q_lens[i] - 1 for i in sample_rows]
            logits = self.model.compute_logits(hidden[last_token_rows])
        requests: list[Request] = [batch[i].request for i in sample_rows]
        return sample(logits, requests)
