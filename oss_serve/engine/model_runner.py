"""Runs one scheduled step on the model. Rank 0 turns the scheduled batch into a `StepPlan`, host data
only; `execute` runs a plan on this process's device. Under tensor parallelism every rank executes rank
0's plans, so page tables, CUDA graphs and inputs still on the device work the same way on all of them."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

import torch

from oss_serve.engine.page_table import PageTableMirror, TableUpdates
from oss_serve.engine.paged_kv import BatchLayout, PagedAttentionBackend, PagedBatch, PagedKVCache
from oss_serve.engine.scheduler import ScheduledSeq
from oss_serve.kernels.async_copy import to_device


@dataclass(frozen=True)
class PendingInputs:
    """Input tokens that the previous step drew and the host has not read yet (overlapped schedule):
    entries `rows` of this step's input ids are entries `sources` of that step's `num_drawn` draws."""
    rows: list[int]
    sources: list[int]
    num_drawn: int

    def fill(self, input_ids: torch.Tensor, drawn: torch.Tensor) -> None:
        """On the device, queued behind the previous step's sampling."""
        device = input_ids.device
        input_ids[to_device(self.rows, torch.int64, device)] = drawn[to_device(self.sources, torch.int64, device)]


@dataclass(frozen=True)
class StepPlan:
    """One forward as host data (what rank 0 sends tensor-parallel workers)."""
    table_updates: TableUpdates  # page-table entries new since the last step
    columns: torch.Tensor  # int64 [4, T]: each new token's id (PENDING_TOKEN if pending), position, two KV slots
    table_rows: list[int]  # each sequence's row of the page-table mirror
    layout: BatchLayout | None  # None: one token per sequence, replayed from a captured CUDA graph
    logit_rows: list[int]  # token rows whose logits the step returns
    pending: PendingInputs | None


class ModelRunner:
    def __init__(self, model: torch.nn.Module, cache: PagedKVCache, device: torch.device, attention_backend: str,
                 max_running_requests: int, max_pages_per_seq: int, returns_logits: bool = True) -> None:
        self.model = model
        self.cache = cache
        self.device = device
        self.page_size = cache.page_size
        self.backend = PagedAttentionBackend(cache, use_triton=attention_backend != "torch")
        self.page_tables = PageTableMirror(max_running_requests, max_pages_per_seq, device)
        self.returns_logits = returns_logits  # False on tensor-parallel workers: rank 0 samples
        self.graphs = None  # DecodeGraphs once enable_cuda_graphs() ran

    def _token_columns(self, batch: list[ScheduledSeq]) -> list[list[int]]:
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
        return [input_ids, positions, full_slots, sliding_slots]

    def plan(self, batch: list[ScheduledSeq], sample_rows: list[int], pending: PendingInputs | None) -> StepPlan:
        """The step's plan; the logits it returns are those of the batch entries listed in `sample_rows`."""
        columns = torch.tensor(self._token_columns(batch), dtype=torch.long)
        layout, logit_rows = None, sample_rows  # one token per sequence: a graph replay needs no more
        if not (self.graphs is not None and columns.shape[1] == len(batch) and self.graphs.fits(len(batch))):
            q_lens = tuple(seq.num_new_tokens for seq in batch)
            starts = tuple(accumulate(q_lens, initial=0))[:-1]
            layout = BatchLayout(q_lens, tuple(seq.request.num_computed + n for seq, n in zip(batch, q_lens)), starts)
            logit_rows = [starts[i] + q_lens[i] - 1 for i in sample_rows]
        return StepPlan(self.page_tables.updates([seq.request for seq in batch]), columns,
                        [seq.request.table_row for seq in batch], layout, logit_rows, pending)

    def enable_cuda_graphs(self, max_batch_size: int) -> None:
        from oss_serve.engine.cuda_graph import DecodeGraphs

        self.graphs = DecodeGraphs(self.model, self.cache, self.page_tables, max_batch_size, self.device,
                                   self.returns_logits)

    def forward(self, batch: list[ScheduledSeq], sample_rows: list[int], pending: PendingInputs | None = None,
                drawn: torch.Tensor | None = None) -> torch.Tensor | None:
        """Queue the batch; returns the logits [len(sample_rows), vocab], None if there are none. `drawn`: the
        previous step's tokens on the device, if `pending` takes inputs from them."""
        return self.execute(self.plan(batch, sample_rows, pending), drawn)

    @torch.inference_mode()
    def execute(self, plan: StepPlan, drawn: torch.Tensor | None) -> torch.Tensor | None:
        """Queue the plan's forward on this device. Graph replays return a static buffer: sample it before
        the next forward."""
        self.page_tables.apply(plan.table_updates)
        device = self.device
        if plan.layout is None:
            out = self.graphs.replay(plan.columns, plan.table_rows, plan.pending, drawn)
            if not self.returns_logits:
                return None
            if len(plan.logit_rows) < len(plan.table_rows):  # else every row: no copy of [batch, vocab] floats
                out = out[to_device(plan.logit_rows, torch.int64, device)]
            return out
        columns = to_device(plan.columns, torch.int64, device)
        if plan.pending is not None:
            plan.pending.fill(columns[0], drawn)
        layout = plan.layout
        full_table, sliding_table = self.page_tables.gather(
            plan.table_rows, max(-(-n // self.page_size) for n in layout.seq_lens))
        self.backend.prepare(PagedBatch(
            cu_q_lens=to_device([*layout.q_starts, layout.q_starts[-1] + layout.q_lens[-1]], torch.int32, device),
            seq_lens=to_device(layout.seq_lens, torch.int32, device), full_page_table=full_table,
            sliding_page_table=sliding_table, full_slots=columns[2], sliding_slots=columns[3], layout=layout))
        hidden = self.model.forward(columns[0], columns[1], self.backend)
        if not plan.logit_rows or not self.returns_logits:
            return None  # e.g. a step of prefill chunks only
        return self.model.compute_logits(hidden[to_device(plan.logit_rows, torch.int64, device)])
