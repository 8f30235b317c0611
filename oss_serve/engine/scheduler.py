"""Continuous-batching scheduler: which requests run this step, with how many tokens, and their KV pages.

Every step: each running request that is decoding gets one token (paging in a new page when it
crosses a page boundary; if memory is out, the prefix cache is evicted, then the newest running
requests are preempted and requeued for recompute). The rest of the step's token budget goes to
prefill chunks: first the requests already mid-prefill, then new requests in arrival order, each
starting from its longest cached prefix.
"""
from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass

from oss_serve.engine.messages import EngineStats
from oss_serve.engine.page_pool import PagePool
from oss_serve.engine.radix_cache import NO_PAGE, RadixCache
from oss_serve.engine.request import Request, Status


@dataclass(frozen=True)
class SchedulerConfig:
    page_size: int
    num_full_pages: int
    num_sliding_pages: int  # 0 when the model has no sliding-window layers
    sliding_window: int | None
    max_running_requests: int
    max_step_tokens: int  # prefill + decode tokens in one forward
    chunk_size: int  # longest prefill chunk
    enable_prefix_cache: bool


@dataclass(frozen=True)
class ScheduledSeq:
    request: Request
    num_new_tokens: int  # computed this step, from request.num_computed


@dataclass(frozen=True)
class StepSchedule:
    """What one step runs, and the requests that can never get their pages (longer than the whole pool)."""
    batch: list[ScheduledSeq]
    unservable: list[Request]


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.page_size = config.page_size
        self.full_pool = PagePool(config.num_full_pages, "full")
        self.sliding_pool = PagePool(config.num_sliding_pages, "sliding") if config.num_sliding_pages else None
        self.window = config.sliding_window if self.sliding_pool is not None else None
        self.prefix_cache = (RadixCache(self.full_pool, self.sliding_pool, self.page_size, self.window)
                             if config.enable_prefix_cache else None)
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []  # in admission order; the newest is preempted first
        self._free_table_rows = list(range(config.max_running_requests - 1, -1, -1))
        self.num_preemptions = 0

    # ---- queue -----------------------------------------------------------------------------
    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def remove(self, request: Request) -> None:
        """Take a request out of the queues and release its pages (abort or finish)."""
        if request.status is Status.WAITING:
            self.waiting.remove(request)
        elif request.status is Status.RUNNING:
            self._stop_running(request)
        request.status = Status.FINISHED

    def finish(self, request: Request) -> None:
        """A request is done: offer its computed pages to the prefix cache, then release them."""
        if self.prefix_cache is not None and request.status is Status.RUNNING:
            self._cache_prefix(request)
        self.remove(request)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- pages -------------------------------------------------------------------------------
    def _pages_needed(self, request: Request, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size) - len(request.full_pages)

    def _grow(self, request: Request, num_tokens: int, keep_free: int = 0) -> bool:
        """Give the request pages for its first `num_tokens` positions, leaving `keep_free` pages
        spare in each pool (room for running requests' next decode). False if memory is out."""
        count = self._pages_needed(request, num_tokens)
        if count <= 0:
            return True
        if not self._make_room(count + keep_free):
            return False
        request.full_pages.extend(self.full_pool.alloc(count))
        if self.sliding_pool is not None:
            request.sliding_pages.extend(self.sliding_pool.alloc(count))
        return True

    def _make_room(self, count: int) -> bool:
        sliding_short = self.sliding_pool is not None and self.sliding_pool.num_free < count
        if self.full_pool.num_free < count or sliding_short:
            if self.prefix_cache is not None:
                self.prefix_cache.evict(count, count)
        return self.full_pool.num_free >= count and (self.sliding_pool is None or self.sliding_pool.num_free >= count)

    def _release(self, request: Request) -> None:
        self.full_pool.decref_all(request.full_pages)
        if self.sliding_pool is not None:
            self.sliding_pool.decref_all(request.sliding_pages)
        request.full_pages, request.sliding_pages = [], []
        request.sliding_released = 0
        request.num_computed = 0

    def _release_out_of_window(self, request: Request) -> None:
        """Free sliding pages no future query of this request can see."""
        if self.sliding_pool is None:
            return
        # The next query sits at position num_computed and sees keys from num_computed - window + 1.
        first_needed = max(0, request.num_computed - self.window + 1) // self.page_size
        pages = request.sliding_pages
        for j in range(request.sliding_released, min(first_needed, len(pages))):
            if pages[j] != NO_PAGE:
                self.sliding_pool.decref(pages[j])
                pages[j] = NO_PAGE
        request.sliding_released = max(request.sliding_released, first_needed)

    def _cache_prefix(self, request: Request) -> None:
        self.prefix_cache.insert(request.token_ids[:request.num_computed], request.full_pages, request.sliding_pages)

    def _use_cached_prefix(self, request: Request) -> None:
        if self.prefix_cache is None or request.num_computed > 0:
            return
        # Leave at least one token to compute: its logits give the next token.
        match = self.prefix_cache.match(request.token_ids, (len(request.token_ids) - 1) // self.page_size)
        for page in match.full_pages:
            self.full_pool.incref(page)
        for page in match.sliding_pages:
            if page != NO_PAGE:
                self.sliding_pool.incref(page)
        request.full_pages = list(match.full_pages)
        request.sliding_pages = list(match.sliding_pages)
        request.num_computed = match.num_pages * self.page_size
        request.sliding_released = next((i for i, p in enumerate(match.sliding_pages) if p != NO_PAGE),
                                        match.num_pages)

    def _stop_running(self, request: Request) -> None:
        self.running.remove(request)
        self._release(request)
        self._free_table_rows.append(request.table_row)
        request.table_row = -1

    def _preempt(self, request: Request) -> None:
        self._stop_running(request)
        request.status = Status.WAITING
        self.waiting.appendleft(request)
        self.num_preemptions += 1

    # ---- the step ----------------------------------------------------------------------------
    def schedule(self) -> StepSchedule:
        budget = self.config.max_step_tokens
        decodes, unservable = self._schedule_decodes()
        batch = list(decodes)
        for seq in self._schedule_prefills(budget - len(decodes), len(decodes), unservable):
            batch.append(seq)
            budget -= seq.num_new_tokens
        if not batch and self.running and not unservable and all(r.is_prefilling for r in self.running):
            # Every running request is stuck mid-prefill waiting for pages the others hold:
            # requeue the newest so the rest can move; a lone one can never fit.
            if len(self.running) == 1:
                unservable.append(self.running[0])
            else:
                self._preempt(self.running[-1])
        return StepSchedule(batch, unservable)

    def _schedule_decodes(self) -> tuple[list[ScheduledSeq], list[Request]]:
        """One token for each decoding request, preempting the newest for pages; (batch, unservable)."""
        batch: list[ScheduledSeq] = []
        unservable: list[Request] = []
        for request in list(self.running):
            if request.status is not Status.RUNNING or request.is_prefilling:
                continue
            if request.awaits_token and request.num_output_tokens >= request.max_new_tokens:
                continue  # the token in flight is its last: it ends when that is read
            while not self._grow(request, request.num_computed + 1):
                victim = self.running[-1]
                if victim is request and len(self.running) == 1:
                    unservable.append(request)  # alone and still no page: longer than the pool
                    break
                self._preempt(victim)
                if victim is request:
                    break
            else:
                batch.append(ScheduledSeq(request, 1))
        return batch, unservable

    def _schedule_prefills(self, budget: int, num_decoding: int, unservable: list[Request]
                           ) -> Iterator[ScheduledSeq]:
        """Prefill chunks within `budget`: requests mid-prefill first, then new ones in arrival order."""
        for request in self.running:
            if budget <= 0:
                break
            if not request.is_prefilling or request in unservable:
                continue
            chunk = min(len(request.token_ids) - request.num_computed, self.config.chunk_size, budget)
            if not self._grow(request, request.num_computed + chunk):
                break
            yield ScheduledSeq(request, chunk)
            budget -= chunk
        while self.waiting and budget > 0 and len(self.running) < self.config.max_running_requests:
            request = self.waiting[0]
            if request.awaits_token:  # preempted with its draw still in flight: a prefill needs the id
                break
            self._use_cached_prefix(request)
            chunk = min(len(request.token_ids) - request.num_computed, self.config.chunk_size, budget)
            keep_free = num_decoding if self.running else 0
            if not self._grow(request, request.num_computed + chunk, keep_free):
                self._release(request)
                break
            self.waiting.popleft()
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = min(request.num_computed, request.num_prompt_tokens)
            request.status = Status.RUNNING
            request.table_row = self._free_table_rows.pop()
            self.running.append(request)
            yield ScheduledSeq(request, chunk)
            budget -= chunk

    def after_forward(self, batch: list[ScheduledSeq]) -> None:
        """The step's KV is written: advance, cache finished prefill pages, drop pages out of window."""
        for seq in batch:
            request = seq.request
            was_prefill = seq.num_new_tokens > 1 or request.num_computed + 1 < len(request.token_ids)
            request.num_computed += seq.num_new_tokens
            if was_prefill and self.prefix_cache is not None:
                # Cached now, while the request still holds the sliding pages of the whole chunk.
                self._cache_prefix(request)
            self._release_out_of_window(request)

    # ---- accounting --------------------------------------------------------------------------
    def stats(self, page_size: int) -> EngineStats:
        full_total = self.full_pool.num_pages
        return EngineStats(
            num_running=len(self.running), num_waiting=len(self.waiting),
            full_pages_used=self.full_pool.num_used, full_pages_total=full_total,
            sliding_pages_used=self.sliding_pool.num_used if self.sliding_pool else 0,
            sliding_pages_total=self.sliding_pool.num_pages if self.sliding_pool else 0,
            kv_usage=self.full_pool.num_used / max(1, full_total), num_preemptions=self.num_preemptions,
            cached_pages=self.prefix_cache.num_nodes if self.prefix_cache else 0,
            num_full_tokens=full_total * page_size)
