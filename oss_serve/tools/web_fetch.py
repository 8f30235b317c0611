"""Fetching pages for the browser tool without becoming a proxy into the server's own network.

Every hop (including redirects) is resolved first and refused when any address is not public
(loopback, private, link-local, carrier-grade NAT, multicast, reserved), unless allowed.
Bodies are read as a stream and cut at a size cap.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlparse

import httpx

MAX_PAGE_BYTES = 2 * 1024 * 1024
MAX_REDIRECTS = 5
USER_AGENT = "oss-serve-browser/0.1"


class FetchError(Exception):
    """A page could not be fetched; the message is meant for the model."""


class FetchRefused(FetchError):
    """The URL points somewhere the browser may not go."""


@dataclass
class FetchedPage:
    url: str
    content_type: str
    text: str


async def _addresses_of(host: str, port: int) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise FetchError(f"Could not resolve host {host!r}: {error.strerror}") from None
    return [str(info[4][0]) for info in infos]


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def check_url_allowed(url: str, allow_private: bool) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise FetchRefused(f"Only http and https URLs can be opened, not {url!r}.")
    if not parsed.hostname:
        raise FetchError(f"{url!r} has no host.")
    if allow_private:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    for address in await _addresses_of(parsed.hostname, port):
        if not is_public_address(address):
            raise FetchRefused(f"Refusing to open {url}: {parsed.hostname} resolves to a private or local address "
                             f"({address}).")


class PageFetcher:
    def __init__(self, *, allow_private: bool = False, timeout_s: float = 20.0) -> None:
        self.allow_private = allow_private
        self.timeout_s = timeout_s

    async def fetch(self, url: str) -> FetchedPage:
        """The page at `url`, within timeout_s in all: httpx's timeout bounds each read, so a
        site that trickles bytes would otherwise hold the tool call for as long as it likes."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._fetch(url)
        except TimeoutError:
            raise FetchError(f"Fetching {url} timed out after {self.timeout_s:g} seconds.") from None

    def _check_connected_peer(self, url: str, response: httpx.Response) -> None:
        """The address actually connected to must pass the same check: httpx resolves the name
        again, and a DNS answer that changed since check_url_allowed (rebinding) would otherwise
        hand an internal page to the model."""
        if self.allow_private:
            return
        stream = response.extensions.get("network_stream")
        peer = stream.get_extra_info("server_addr") if stream is not None else None
        if peer and not is_public_address(str(peer[0])):
            raise FetchRefused(f"Refusing to open {url}: it connected to a private or local address ({peer[0]}).")

    async def _fetch(self, url: str) -> FetchedPage:
        # trust_env off: a proxy from the environment would bypass the address check.
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False, trust_env=False,
                                     headers={"User-Agent": USER_AGENT}) as client:
            for _ in range(MAX_REDIRECTS + 1):
                await check_url_allowed(url, self.allow_private)
                try:
                    async with client.stream("GET", url) as response:
                        self._check_connected_peer(url, response)
                        if response.is_redirect and "location" in response.headers:
                            url = urljoin(url, response.headers["location"])
                            continue
                        if response.status_code >= 400:
                            raise FetchError(f"Fetching {url} failed with HTTP {response.status_code}.")
                        body = bytearray()
                        async for chunk in response.aiter_bytes():
                            body += chunk
                            if len(body) > MAX_PAGE_BYTES:
                                del body[MAX_PAGE_BYTES:]
                                break
                        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
                        encoding = response.charset_encoding or "utf-8"
                        text = bytes(body).decode(encoding, errors="replace")
                        return FetchedPage(url=str(response.url), content_type=content_type, text=text)
                except httpx.TimeoutException:
                    raise FetchError(f"Fetching {url} timed out after {self.timeout_s:g} seconds.") from None
                except httpx.HTTPError as error:
                    raise FetchError(f"Fetching {url} failed: {error}") from None
        raise FetchError(f"Too many redirects while opening {url}.")
