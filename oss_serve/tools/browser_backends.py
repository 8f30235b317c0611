"""Web search providers for the browser tool: Exa and You.com, chosen by BROWSER_BACKEND or by key."""
from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass

import httpx

from oss_serve import env

logger = logging.getLogger(__name__)


class SearchError(Exception):
    """The provider failed; the message is meant for the model."""


@dataclass
class SearchHit:
    url: str
    title: str
    snippet: str
    text: str | None = None  # full page text when the provider returned it


@dataclass
class PageText:
    url: str
    title: str
    text: str


class SearchBackend(ABC):
    name: str

    def __init__(self, api_key: str, base_url: str, timeout_s: float = 20.0) -> None:
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    @abstractmethod
    async def search(self, query: str, max_results: int) -> list[SearchHit]:
        ...

    async def contents(self, url: str) -> PageText | None:
        """The provider's text of `url`, used when fetching the page directly fails."""
        return None

    async def _request(self, method: str, path: str, **kwargs: object) -> dict:
        try:
            # httpx's timeout bounds each read, not the whole answer: a provider that trickles
            # bytes would hold the tool call forever without the outer deadline.
            async with asyncio.timeout(self.timeout_s), httpx.AsyncClient(timeout=self.timeout_s) as client:
                response = await client.request(method, self.base_url + path, headers=self._headers(), **kwargs)
        except TimeoutError:
            raise SearchError(f"{self.name} did not answer within {self.timeout_s:g} seconds") from None
        except httpx.HTTPError as error:
            raise SearchError(f"{self.name} request failed: {error or type(error).__name__}") from None
        if response.status_code >= 400:
            raise SearchError(f"{self.name} answered HTTP {response.status_code}: {response.text[:200]}")
        try:
            return response.json()
        except ValueError:
            raise SearchError(f"{self.name} answered with something that is not JSON") from None

    @abstractmethod
    def _headers(self) -> dict[str, str]:
        ...


class ExaBackend(SearchBackend):
    name = "exa"

    def __init__(self, api_key: str, base_url: str | None = None, timeout_s: float = 20.0) -> None:
        super().__init__(api_key, base_url or env.search_settings()["exa_url"] or "https://api.exa.ai", timeout_s)

    def _headers(self) -> dict[str, str]:
        return {"x-api-key": self.api_key, "content-type": "application/json"}

    async def search(self, query: str, max_results: int) -> list[SearchHit]:
        answer = await self._request("POST", "/search", json={
            "query": query, "numResults": max_results, "contents": {"text": True, "summary": True}})
        hits = []
        for result in answer.get("results") or []:
            if not result.get("url"):
                continue
            text = result.get("text") or None
            snippet = result.get("summary") or (text or "")[:400]
            hits.append(SearchHit(url=result["url"], title=result.get("title") or result["url"],
                                  snippet=snippet, text=text))
        return hits

    async def contents(self, url: str) -> PageText | None:
        answer = await self._request("POST", "/contents", json={"urls": [url], "text": True})
        for result in answer.get("results") or []:
            if result.get("text"):
                return PageText(url=result.get("url") or url, title=result.get("title") or url, text=result["text"])
        return None


class YouComBackend(SearchBackend):
    name = "you.com"

    def __init__(self, api_key: str, base_url: str | None = None, timeout_s: float = 20.0) -> None:
        super().__init__(api_key, base_url or env.search_settings()["you_url"] or "https://api.ydc-index.io", timeout_s)

    def _headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}

    async def search(self, query: str, max_results: int) -> list[SearchHit]:
        answer = await self._request("GET", "/search", params={"query": query, "num_web_results": max_results})
        hits = []
        for hit in (answer.get("hits") or [])[:max_results]:
            if not hit.get("url"):
                continue
            snippet = " ".join(hit.get("snippets") or []) or hit.get("description") or ""
            hits.append(SearchHit(url=hit["url"], title=hit.get("title") or hit["url"], snippet=snippet))
        return hits


def choose_search_backend(requested: str | None = None) -> SearchBackend | None:
    """BROWSER_BACKEND (or `requested`) picks the provider; otherwise whichever key is set."""
    settings = env.search_settings()
    choice = (requested or settings["backend"] or "").strip().lower()
    exa_key, you_key = settings["exa_key"], settings["you_key"]
    if choice in ("", "exa") and exa_key:
        return ExaBackend(exa_key)
    if choice in ("", "you", "youcom", "you.com", "ydc") and you_key:
        return YouComBackend(you_key)
    if choice not in ("", "exa", "you", "youcom", "you.com", "ydc"):
        raise ValueError(f"unknown browser backend {choice!r}: use exa or you")
    logger.warning("browser tool disabled: set %s to enable web search", missing_search_key(requested))
    return None


def missing_search_key(requested: str | None = None) -> str:
    """The environment variable(s) web search needs, for the backend BROWSER_BACKEND (or
    `requested`) names: what to tell someone whose server has no search key."""
    choice = (requested or env.search_settings()["backend"] or "").strip().lower()
    return {"exa": "EXA_API_KEY", "": "EXA_API_KEY or YDC_API_KEY"}.get(choice, "YDC_API_KEY")
