"""A pool of physical KV pages with reference counts (requests and the prefix cache share pages)."""
from __future__ import annotations


class OutOfPages(Exception):
    """The pool cannot satisfy an allocation; the scheduler evicts or preempts and retries."""


class PagePool:
    def __init__(self, num_pages: int, name: str) -> None:
        self.name = name
        self.num_pages = num_pages
        self._refcount = [0] * num_pages
        # A stack: recently freed pages are reused first, which keeps the touched memory small.
        self._free = list(range(num_pages - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_pages - len(self._free)

    def refcount(self, page: int) -> int:
        return self._refcount[page]

    def alloc(self, count: int) -> list[int]:
        if count > len(self._free):
            raise OutOfPages(f"{self.name} pool: {count} pages wanted, {len(self._free)} free")
        if count == 0:
            return []
        pages = self._free[-count:]
        del self._free[-count:]
        for page in pages:
            self._refcount[page] = 1
        return pages

    def incref(self, page: int) -> None:
        assert self._refcount[page] > 0, f"{self.name} pool: incref of free page {page}"
        self._refcount[page] += 1

    def decref(self, page: int) -> None:
        count = self._refcount[page] - 1
        assert count >= 0, f"{self.name} pool: decref of free page {page}"
        self._refcount[page] = count
        if count == 0:
            self._free.append(page)

    def decref_all(self, pages: list[int]) -> None:
        for page in pages:
            if page >= 0:
                self.decref(page)
