"""Prefix cache: a tree of whole KV pages keyed by their tokens, shared across requests, LRU-evicted.

Each node stands for one page of `page_size` tokens following its parent's tokens. It holds one
reference on its full-attention page and, when it still has it, one on its sliding-window page.

Sliding layers only ever need the last `window` keys, so running requests drop their old sliding
pages; a prefix is reusable up to page depth d only if the sliding pages of the window before
position d*page_size are all still in the tree. Sliding pages held only by the tree are the first
thing evicted under memory pressure (the full pages stay and still help shorter matches), then
whole leaves in LRU order.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from oss_serve.engine.page_pool import PagePool

NO_PAGE = -1


@dataclass(eq=False)
class _Node:
    key: tuple[int, ...]
    parent: _Node | None
    full_page: int
    sliding_page: int
    depth: int  # pages from the root, this one included
    last_used: int = 0
    children: dict[tuple[int, ...], _Node] = field(default_factory=dict)


@dataclass(frozen=True)
class PrefixMatch:
    full_pages: list[int]  # one per matched page, from the start of the sequence
    sliding_pages: list[int]  # same length; NO_PAGE where outside the window the continuation needs

    @property
    def num_pages(self) -> int:
        return len(self.full_pages)


class RadixCache:
    def __init__(self, full_pool: PagePool, sliding_pool: PagePool | None, page_size: int,
                 sliding_window: int | None) -> None:
        self.full_pool = full_pool
        self.sliding_pool = sliding_pool
        self.page_size = page_size
        self.sliding_window = sliding_window if sliding_pool is not None else None
        self._root = _Node(key=(), parent=None, full_page=NO_PAGE, sliding_page=NO_PAGE, depth=0)
        self._clock = 0
        self.num_nodes = 0

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _first_needed_page(self, depth: int) -> int:
        """First page whose sliding KV a continuation from `depth` pages still reads."""
        if self.sliding_window is None:
            return depth
        return max(0, depth * self.page_size - self.sliding_window + 1) // self.page_size

    def match(self, token_ids: list[int], max_pages: int) -> PrefixMatch:
        """Longest cached, usable prefix of at most `max_pages` pages. Takes no references."""
        ps = self.page_size
        path: list[_Node] = []
        node = self._root
        now = self._tick()
        for j in range(min(max_pages, len(token_ids) // ps)):
            child = node.children.get(tuple(token_ids[j * ps:(j + 1) * ps]))
            if child is None:
                break
            child.last_used = now
            path.append(child)
            node = child
        usable = len(path)
        if self.sliding_window is not None:
            # Shorten until the window before the cut point has all its sliding pages.
            while usable > 0:
                first = self._first_needed_page(usable)
                if all(n.sliding_page != NO_PAGE for n in path[first:usable]):
                    break
                usable -= 1
        path = path[:usable]
        first = self._first_needed_page(usable)
        return PrefixMatch(full_pages=[n.full_page for n in path],
                           sliding_pages=[n.sliding_page if i >= first else NO_PAGE for i, n in enumerate(path)])

    def insert(self, token_ids: list[int], full_pages: list[int], sliding_pages: list[int]) -> None:
        """Cache the whole pages of a sequence's computed tokens (the tree takes its own references)."""
        ps = self.page_size
        node = self._root
        now = self._tick()
        for j in range(min(len(full_pages), len(token_ids) // ps)):
            key = tuple(token_ids[j * ps:(j + 1) * ps])
            child = node.children.get(key)
            if child is None:
                self.full_pool.incref(full_pages[j])
                sliding = sliding_pages[j] if j < len(sliding_pages) else NO_PAGE
                if sliding != NO_PAGE:
                    self.sliding_pool.incref(sliding)
                child = _Node(key=key, parent=node, full_page=full_pages[j], sliding_page=sliding, depth=j + 1)
                node.children[key] = child
                self.num_nodes += 1
            elif (child.sliding_page == NO_PAGE and j < len(sliding_pages) and sliding_pages[j] != NO_PAGE
                  and child.full_page == full_pages[j]):
                # Same KV (same full page means same computation), so its sliding page is valid here too.
                self.sliding_pool.incref(sliding_pages[j])
                child.sliding_page = sliding_pages[j]
            child.last_used = now
            node = child

    def _nodes(self) -> list[_Node]:
        nodes, stack = [], list(self._root.children.values())
        while stack:
            node = stack.pop()
            nodes.append(node)
            stack.extend(node.children.values())
        return nodes

    def evict(self, full_pages_wanted: int, sliding_pages_wanted: int) -> None:
        """Release cached pages, least recently used first, until the pools have the wanted free pages
        or nothing more can go. Pages a running request also holds are never freed by this."""
        if self.sliding_pool is not None and self.sliding_pool.num_free < sliding_pages_wanted:
            candidates = sorted((n for n in self._nodes() if n.sliding_page != NO_PAGE
                                 and self.sliding_pool.refcount(n.sliding_page) == 1), key=lambda n: n.last_used)
            for node in candidates:
                if self.sliding_pool.num_free >= sliding_pages_wanted:
                    break
                self.sliding_pool.decref(node.sliding_page)
                node.sliding_page = NO_PAGE
        if self.full_pool.num_free >= full_pages_wanted:
            return
        heap = [(n.last_used, id(n), n) for n in self._nodes() if not n.children]
        heapq.heapify(heap)
        while heap and self.full_pool.num_free < full_pages_wanted:
            _, _, node = heapq.heappop(heap)
            if self.full_pool.refcount(node.full_page) > 1:
                continue  # a running request reads it
            self._remove_leaf(node)
            parent = node.parent
            if parent is not self._root and not parent.children:
                heapq.heappush(heap, (parent.last_used, id(parent), parent))

    def _remove_leaf(self, node: _Node) -> None:
        del node.parent.children[node.key]
        self.full_pool.decref(node.full_page)
        if node.sliding_page != NO_PAGE:
            self.sliding_pool.decref(node.sliding_page)
        self.num_nodes -= 1

    def clear(self) -> None:
        """Drop every cached page (used by tests and on reset)."""
        for node in sorted(self._nodes(), key=lambda n: -n.depth):
            self._remove_leaf(node)
