"""Runs one scheduled step on the model: packs the batch, lays out the paged cache, returns the logits to sample."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from oss_serve.attention.paged import BatchLayout, PagedAttentionBackend, PagedBatch, PagedKVCache
from oss_serve.async_copy import to_device
from oss_serve.engine.page_table import PageTableMirror
from oss_serve.engine.scheduler import ScheduledSeq


@dataclass(frozen=True)
class PendingInputs:
    """Input tokens that the previous step drew and the host has not read yet (overlapped schedule):
    entries `rows` of this step's input ids are entries `sources` of the previous step's tokens."""
    rows: list[int]
    sources: list[int]
    tokens: torch.Tensor

    def fill(self, input_ids: torch.Tensor) -> None:
        """On the device, queued behind the previous step's sampling."""
        device = input_ids.device
        input_ids[to_device(self.rows, torch.int64, device)] = self.tokens[to_device(self.sources, torch.int64, device)]


class ModelRunner:
    def __init__(self, model: torch.nn.Module, cache: PagedKVCache, device: torch.device, attention_backend: str,
                 max_running_requests: int, max_pages_per_seq: int) -> None:
        self.model = model
        self.cache = cache
        self.device = device
        self.page_size = cache.page_size
        self.backend = PagedAttentionBackend(cache, use_triton=attention_backend != "torch")
        self.page_tables = PageTableMirror(max_running_requests, max_pages_per_seq, device)
        self.graphs = None  # DecodeGraphs once enable_cuda_graphs() ran

    def _token_columns(self, batch: list[ScheduledSeq]) -> tuple[list[int], list[int], list[int], list[int]]:
        """Per new token: its id, position, and KV slot (page * page_size + offset) in the full and sliding pools."""
        ps = self.page_size
        input_ids: list[int] = []
        positions: list[int] = []
        full_slots: list[int] = []
        sliding_slots: list[int] = []
        for seq in batch:
            request, start, n = seq.request, seq.request.num_computed, seq.num_new_tokens
            input_ids.extend(request.token_ids[start:start + n])
            full, sliding = request.full_pages, request.sliding_pages
            if n == 1:  # a decode: plain arithmetic beats tensor ops
                positions.append(start)
                full_slots.append(full[start // ps] * ps + start % ps)
                sliding_slots.append(sliding[start // ps] * ps + start % ps if sliding else start % ps)
                continue
            span = torch.arange(start, start + n)
            first, last = start // ps, (start + n - 1) // ps
            logical, offset = span // ps - first, span % ps
            positions.extend(span.tolist())
            full_slots.extend((torch.tensor(full[first:last + 1])[logical] * ps + offset).tolist())
            if sliding:  # the chunk's own pages are in its window, never NO_PAGE
                sliding_slots.extend((torch.tensor(sliding[first:last + 1])[logical] * ps + offset).tolist())
            else:
                sliding_slots.extend(offset.tolist())
        return input_ids, positions, full_slots, sliding_slots

    def decode_inputs(self, batch: list[ScheduledSeq]) -> torch.Tensor:
        """A one-token-per-sequence step as a CUDA graph takes it: int64 [5, n] host rows of token, position,
        full slot, sliding slot and page-table row."""
        return torch.tensor([*self._token_columns(batch), [seq.request.table_row for seq in batch]], dtype=torch.long)

    def _prepare(self, batch: list[ScheduledSeq]) -> tuple[torch.Tensor, torch.Tensor, PagedBatch]:
        input_ids, positions, full_slots, sliding_slots = self._token_columns(batch)
        q_lens = [seq.num_new_tokens for seq in batch]
        seq_lens = [seq.request.num_computed + seq.num_new_tokens for seq in batch]
        full_table, sliding_table = self.page_tables.gather(
            [seq.request.table_row for seq in batch], max(-(-n // self.page_size) for n in seq_lens))
        cu = [0]
        for n in q_lens:
            cu.append(cu[-1] + n)
        # Host tensors but the tables (already on the device); `_to_device` moves the rest.
        paged = PagedBatch(
            cu_q_lens=torch.tensor(cu, dtype=torch.int32), seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            full_page_table=full_table, sliding_page_table=sliding_table,
            full_slots=torch.tensor(full_slots, dtype=torch.long),
            sliding_slots=torch.tensor(sliding_slots, dtype=torch.long),
            layout=BatchLayout(tuple(q_lens), tuple(seq_lens), tuple(cu[:-1])),
        )
        return torch.tensor(input_ids, dtype=torch.long), torch.tensor(positions, dtype=torch.long), paged

    def _to_device(self, input_ids: torch.Tensor, positions: torch.Tensor, paged: PagedBatch
                   ) -> tuple[torch.Tensor, torch.Tensor, PagedBatch]:
        device = self.device
        if device.type == "cpu":
            return input_ids, positions, paged
        moved = PagedBatch(to_device(paged.cu_q_lens, torch.int32, device),
                           to_device(paged.seq_lens, torch.int32, device),
                           paged.full_page_table, paged.sliding_page_table,
                           to_device(paged.full_slots, torch.int64, device),
                           to_device(paged.sliding_slots, torch.int64, device), paged.layout)
        return to_device(input_ids, torch.int64, device), to_device(positions, torch.int64, device), moved

    def enable_cuda_graphs(self, max_batch_size: int) -> None:
        from oss_serve.engine.cuda_graph import DecodeGraphs

        self.graphs = DecodeGraphs(self.model, self.cache, self.page_tables, max_batch_size, self.device)

    @torch.inference_mode()
    def forward(self, batch: list[ScheduledSeq], sample_rows: list[int], pending: PendingInputs | None = None
                ) -> torch.Tensor | None:
        """Queue the batch; returns the logits [len(sample_rows), vocab] of the batch entries listed in
        `sample_rows` (those whose step computes their last known token), None if there are none. Graph
        replays return a static buffer: sample it before the next forward."""
        self.page_tables.sync([seq.request for seq in batch])
        all_decode = all(seq.num_new_tokens == 1 for seq in batch)
        if self.graphs is not None and all_decode and self.graphs.fits(len(batch)):
            logits = self.graphs.replay(self.decode_inputs(batch), pending)
            if len(sample_rows) < len(batch):  # else every row: no copy of [batch, vocab] floats
                logits = logits[to_device(sample_rows, torch.int64, self.device)]
        else:
            input_ids, positions, paged = self._to_device(*self._prepare(batch))
            if pending is not None:
                pending.fill(input_ids)
            self.backend.prepare(paged)
            hidden = self.model.forward(input_ids, positions, self.backend)
            if not sample_rows:
                return None  # a step of prefill chunks only: no logits needed
            last_token_rows = [paged.layout.q_starts[i] + paged.layout.q_lens[i] - 1 for i in sample_rows]
            logits = self.model.compute_logits(hidden[to_device(last_token_rows, torch.int64, self.device)])
        return logits
