"""Running requests' page lists mirrored in device tensors, one row per request.

Building each step's [batch, pages] page tables on the host and copying them over costs time that grows
with batch size times context length: at 256 sequences of ~1k tokens it was milliseconds of every decode
step. Here a row is written once and then only the pages added since the last step are written, so
a step's host work and copies grow with the batch alone; the step's tables are gathered on the device.

Rows are the scheduler's (`Request.table_row`, held while the request runs). A row is rewritten from the
start when it changes hands or its request's page lists were replaced (released, or taken from the
prefix cache). Sliding pages given back outside the window keep their stale ids here: attention never
reads a page outside its window. Rank 0 works out which entries are new (`updates`, host data it sends
to tensor-parallel workers); every rank writes them into its own mirror (`apply`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from oss_serve.engine.radix_cache import NO_PAGE
from oss_serve.engine.request import Request
from oss_serve.kernels.async_copy import to_device

# (row, column, page) triples, flattened, for the full and the sliding tables.
TableUpdates = tuple[list[int], list[int]]


@dataclass
class _MirroredRow:
    # Held (not just their ids) so that identity checks cannot be fooled by a reused address.
    request: Request
    full_pages: list[int]
    sliding_pages: list[int]
    num_full: int
    num_sliding: int


class PageTableMirror:
    def __init__(self, num_rows: int, max_pages: int, device: torch.device) -> None:
        self.full = torch.zeros(num_rows, max_pages, dtype=torch.int32, device=device)
        self.sliding = torch.zeros(num_rows, max_pages, dtype=torch.int32, device=device)
        self._rows: list[_MirroredRow | None] = [None] * num_rows

    def updates(self, requests: list[Request]) -> TableUpdates:
        """The entries these requests gained since they were last planned (host bookkeeping, rank 0's)."""
        full_updates: list[int] = []
        sliding_updates: list[int] = []
        for request in requests:
            row = request.table_row
            mirrored = self._rows[row]
            full, sliding = request.full_pages, request.sliding_pages
            if (mirrored is None or mirrored.request is not request or mirrored.full_pages is not full
                    or mirrored.sliding_pages is not sliding):
                mirrored = self._rows[row] = _MirroredRow(request, full, sliding, 0, 0)
            for column in range(mirrored.num_full, len(full)):
                full_updates += (row, column, full[column])
            for column in range(mirrored.num_sliding, len(sliding)):
                page = sliding[column]
                sliding_updates += (row, column, page if page != NO_PAGE else 0)
            mirrored.num_full, mirrored.num_sliding = len(full), len(sliding)
        return full_updates, sliding_updates

    def apply(self, updates: TableUpdates) -> None:
        """Write them into the device tables (every tensor-parallel rank applies rank 0's updates)."""
        for table, triples in zip((self.full, self.sliding), updates):
            if triples:
                entries = to_device(triples, torch.int64, table.device).view(-1, 3)
                table[entries[:, 0], entries[:, 1]] = entries[:, 2].to(torch.int32)

    def gather(self, rows: list[int], num_pages: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The full and sliding page tables [len(rows), num_pages] of these rows (device tensors)."""
        index = to_device(rows, torch.int64, self.full.device)
        return self.full[index, :num_pages], self.sliding[index, :num_pages]
