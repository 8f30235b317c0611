"""The built-in `browser` tool: search, open and find, with the page history of one response."""
from __future__ import annotations

import json
from typing import Any

import openai_harmony

from oss_serve.tools.base import ToolCallDetails, ToolResult, ToolServer, ToolSession, split_recipient
from oss_serve.tools.browser_backends import SearchBackend, SearchError
from oss_serve.tools.browser_page import Page, find_page, html_to_page, search_page, source_page, text_to_page
from oss_serve.tools.citations import Annotation, annotate_citations
from oss_serve.tools.web_fetch import FetchError, FetchRefused, PageFetcher

BROWSER_FUNCTIONS = ("search", "open", "find")


class BrowserToolServer(ToolServer):
    def __init__(self, search_backend: SearchBackend, *, allow_private: bool = False, timeout_s: float = 20.0) -> None:
        self.search_backend = search_backend
        self.fetcher = PageFetcher(allow_private=allow_private, timeout_s=timeout_s)

    def namespaces(self) -> list[openai_harmony.ToolNamespaceConfig]:
        # harmony's stock description is exactly what this implementation does.
        return [openai_harmony.ToolNamespaceConfig.browser()]

    def has_tool(self, recipient: str) -> bool:
        namespace, function = split_recipient(recipient)
        return namespace == "browser" and function in BROWSER_FUNCTIONS

    async def open_session(self) -> BrowserSession:
        return BrowserSession(self)


class BrowserSession(ToolSession):
    def __init__(self, tool: BrowserToolServer) -> None:
        self.tool = tool
        self.pages: list[Page] = []  # index = cursor
        self.page_by_url: dict[str, Page] = {}
        # Page text that came with search results: shown when the site itself cannot be fetched.
        self.search_hit_pages: dict[str, Page] = {}

    def page_at(self, cursor: int) -> Page | None:
        if cursor == -1:
            return self.pages[-1] if self.pages else None
        return self.pages[cursor] if 0 <= cursor < len(self.pages) else None

    def _show(self, page: Page, loc: int = -1, num_lines: int = -1) -> str:
        cursor = len(self.pages)
        self.pages.append(page)
        if page.url.startswith(("http://", "https://")):
            self.page_by_url.setdefault(page.url, page)
        return page.view(cursor, loc, num_lines)

    async def call(self, recipient: str, arguments: str) -> ToolResult:
        _, function = split_recipient(recipient)
        details = ToolCallDetails(kind="browser")
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
            if not isinstance(parsed, dict):
                raise ValueError("arguments must be a JSON object")
        except ValueError as error:
            return ToolResult(recipient, f"Invalid arguments for {recipient}: {error}", details, is_error=True)
        try:
            if function == "search":
                text = await self._search(parsed, details)
            elif function == "open":
                text = await self._open(parsed, details)
            elif function == "find":
                text = self._find(parsed, details)
            else:
                return ToolResult(recipient, f"Unknown browser function {recipient!r}; use browser.search, "
                                  "browser.open or browser.find.", details, is_error=True)
        except (FetchError, SearchError, ValueError, TypeError) as error:
            return ToolResult(recipient, f"Error: {error}", details, is_error=True)
        return ToolResult(recipient, text, details)

    async def _search(self, arguments: dict[str, Any], details: ToolCallDetails) -> str:
        query = arguments.get("query")
        if not isinstance(query, str) or not query.strip():
            raise ValueError("search needs a non-empty `query`")
        topn = int(arguments.get("topn") or 10)
        details.action, details.query = "search", query
        hits = await self.tool.search_backend.search(query, max(1, min(topn, 25)))
        for hit in hits:
            if hit.text:
                self.search_hit_pages[hit.url] = text_to_page(hit.text, hit.url, hit.title)
        return self._show(search_page(query, hits))

    async def _open(self, arguments: dict[str, Any], details: ToolCallDetails) -> str:
        link: Any = arguments.get("id", -1)
        cursor = int(arguments.get("cursor", -1))
        loc = int(arguments.get("loc", -1))
        num_lines = int(arguments.get("num_lines", -1))
        view_source = bool(arguments.get("view_source", False))
        details.action = "open_page"
        if isinstance(link, str) and link.strip().lstrip("-").isdigit():
            link = int(link)
        if isinstance(link, str):
            page = await self._load(link.strip())
        else:
            origin = self.page_at(cursor)
            if origin is None:
                raise ValueError("no page is open yet: search first or open a URL")
            if link == -1:
                page = origin  # scrolling the page at `cursor`
            else:
                target = origin.links.get(int(link))
                if target is None:
                    raise ValueError(f"link {link} is not on page [{cursor if cursor >= 0 else len(self.pages) - 1}]")
                page = await self._load(target.url)
                if loc < 0:
                    loc = target.loc
        details.url = page.url
        if view_source:
            page = source_page(page)
        return self._show(page, loc, num_lines)

    async def _load(self, url: str) -> Page:
        known = self.page_by_url.get(url)
        if known is not None:
            return known
        try:
            fetched = await self.tool.fetcher.fetch(url)
        except FetchRefused:
            raise
        except FetchError:
            if url in self.search_hit_pages:
                return self.search_hit_pages[url]
            fallback = await self.tool.search_backend.contents(url)
            if fallback is None:
                raise
            return text_to_page(fallback.text, fallback.url, fallback.title)
        if fetched.content_type in ("text/html", "application/xhtml+xml", ""):
            return html_to_page(fetched.text, fetched.url)
        if fetched.content_type.startswith("text/") or fetched.content_type in ("application/json", "application/xml"):
            return text_to_page(fetched.text, fetched.url)
        raise FetchError(f"{url} is {fetched.content_type}, which the browser cannot display.")

    def _find(self, arguments: dict[str, Any], details: ToolCallDetails) -> str:
        pattern = arguments.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("find needs a non-empty `pattern`")
        cursor = int(arguments.get("cursor", -1))
        page = self.page_at(cursor)
        if page is None:
            raise ValueError("no page to search: open one first")
        details.action, details.pattern, details.url = "find", pattern, page.url
        results = find_page(page, pattern)
        if results is None:
            return f"No matches for `{pattern}` in [{self.pages.index(page)}] {page.title}."
        return self._show(results)

    def annotate(self, text: str) -> tuple[str, list[Annotation]]:
        return annotate_citations(text, self.pages)
