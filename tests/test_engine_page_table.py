"""The device page-table mirror matches the requests' page lists through growth, release and row reuse."""
from __future__ import annotations

import random

import torch

from oss_serve.engine.page_table import PageTableMirror
from oss_serve.engine.radix_cache import NO_PAGE
from oss_serve.engine.request import Request
from oss_serve.engine.sampling_params import SamplingParams


def _request(name: str, row: int) -> Request:
    request = Request(name, [1, 2, 3], SamplingParams(), 10, random.Random(0))
    request.table_row = row
    return request


def _expect(mirror: PageTableMirror, requests: list[Request]) -> None:
    width = max(len(r.full_pages) for r in requests)
    full, sliding = mirror.gather([r.table_row for r in requests], width)
    for i, request in enumerate(requests):
        assert full[i, :len(request.full_pages)].tolist() == request.full_pages
        # Sliding pages released after they were mirrored may read stale; new NO_PAGE entries read 0.
        for column, page in enumerate(request.sliding_pages):
            if page != NO_PAGE:
                assert sliding[i, column].item() == page


def test_mirror_follows_growth_replacement_and_row_reuse() -> None:
    mirror = PageTableMirror(num_rows=4, max_pages=16, device=torch.device("cpu"))
    a, b = _request("a", 0), _request("b", 3)
    a.full_pages, a.sliding_pages = [5, 6], [7, 8]
    b.full_pages, b.sliding_pages = [9], [NO_PAGE]  # a prefix-cache hit whose sliding page is out of window
    mirror.apply(mirror.updates([a, b]))
    _expect(mirror, [a, b])

    a.full_pages.extend([10, 11])  # decode crossed pages: only the new columns are written
    a.sliding_pages.extend([12, 13])
    a.sliding_pages[0] = NO_PAGE  # released outside the window
    mirror.apply(mirror.updates([a]))
    _expect(mirror, [a, b])

    a.full_pages, a.sliding_pages = [1], [2]  # released and re-admitted: fresh lists, same row
    mirror.apply(mirror.updates([a]))
    _expect(mirror, [a])

    c = _request("c", 3)  # b finished; its row goes to a new request with fewer pages
    c.full_pages, c.sliding_pages = [14, 15, 3], [4, 0, 1]
    mirror.apply(mirror.updates([c, a]))
    _expect(mirror, [c, a])
