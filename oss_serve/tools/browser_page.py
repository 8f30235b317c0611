"""What the browser tool shows the model: pages as numbered, wrapped lines with numbered links.

Format (REFERENCE section 4): a header `[{cursor}] {title} ({url})`, `**viewing lines [a - b] of N**`,
then `L{i}: text`; links inside text read `【{id}†{text}】`, with `†{domain}` added for off-site links.
"""
from __future__ import annotations

import html
import textwrap
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import quote, urljoin, urlparse

import html2text

from oss_serve.tools.browser_backends import SearchHit

WRAP_COLUMNS = 80
# About 1024 tokens at ~4 characters per token: the most one view shows.
VIEW_CHAR_BUDGET = 4000


@dataclass
class LinkTarget:
    url: str
    loc: int = -1  # a line to open at (find results point into their page)


@dataclass
class Page:
    url: str
    title: str
    lines: list[str]
    links: dict[int, LinkTarget] = field(default_factory=dict)
    source: str | None = None  # raw markup, for view_source

    def view(self, cursor: int, loc: int = -1, num_lines: int = -1) -> str:
        """One screen of the page at `cursor` starting at line `loc`: as many lines as fit the budget or `num_lines`."""
        total = len(self.lines)
        start = max(0, min(loc if loc >= 0 else 0, max(total - 1, 0)))
        end = start
        used = 0
        while end < total:
            cost = len(self.lines[end]) + 8
            if num_lines > 0 and end - start >= num_lines:
                break
            if num_lines <= 0 and used + cost > VIEW_CHAR_BUDGET and end > start:
                break
            used += cost
            end += 1
        header = f"[{cursor}] {self.title}" + (f" ({self.url})" if self.url else "")
        if total == 0:
            return header + "\n**viewing lines [0 - 0] of 0**\n\n(empty page)"
        body = "\n".join(f"L{i}: {self.lines[i]}" for i in range(start, end))
        return f"{header}\n**viewing lines [{start} - {end - 1}] of {total - 1}**\n\n{body}"


def domain_of(url: str) -> str:
    host = urlparse(url).netloc
    return host[4:] if host.startswith("www.") else host


def wrap_text(text: str, width: int = WRAP_COLUMNS) -> list[str]:
    lines: list[str] = []
    for paragraph in text.splitlines():
        if not paragraph.strip():
            if lines and lines[-1] != "":
                lines.append("")
            continue
        lines.extend(textwrap.wrap(paragraph, width=width, break_on_hyphens=False, replace_whitespace=False,
                                   drop_whitespace=True) or [""])
    while lines and lines[-1] == "":
        lines.pop()
    return lines


class _AnchorNumberer(HTMLParser):
    """Re-emits the HTML with each link turned into a `【id†text】` marker and collects the targets.

    html2text then converts the rest (headings, lists, tables) with links switched off.
    """

    def __init__(self, base_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base_url = base_url
        self.base_domain = domain_of(base_url)
        self.out: list[str] = []
        self.links: dict[int, LinkTarget] = {}
        self.title_parts: list[str] = []
        self.in_title = False
        self.open_anchor_suffix: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        if tag == "a":
            href = (dict(attrs).get("href") or "").strip()
            target = urljoin(self.base_url, href) if href else ""
            if urlparse(target).scheme in ("http", "https") and not href.startswith("#"):
                link_id = len(self.links)
                self.links[link_id] = LinkTarget(target)
                target_domain = domain_of(target)
                suffix = f"†{target_domain}】" if target_domain != self.base_domain else "】"
                self.out.append(f"【{link_id}†")
                self.open_anchor_suffix.append(suffix)
            else:
                self.open_anchor_suffix.append(None)
            return
        self.out.append(self.get_starttag_text() or "")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.out.append(self.get_starttag_text() or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if tag == "a":
            suffix = self.open_anchor_suffix.pop() if self.open_anchor_suffix else None
            if suffix is not None:
                self.out.append(suffix)
            return
        self.out.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title_parts.append(data)
            return
        self.out.append(html.escape(data, quote=False))


def html_to_page(markup: str, url: str) -> Page:
    numberer = _AnchorNumberer(url)
    numberer.feed(markup)
    numberer.close()
    converter = html2text.HTML2Text(baseurl=url, bodywidth=0)
    converter.ignore_links = True
    converter.ignore_images = True
    converter.ignore_emphasis = True
    converter.unicode_snob = True
    text = converter.handle("".join(numberer.out))
    title = " ".join("".join(numberer.title_parts).split()) or domain_of(url) or url
    return Page(url=url, title=title, lines=wrap_text(text), links=numberer.links, source=markup)


def text_to_page(text: str, url: str, title: str | None = None) -> Page:
    return Page(url=url, title=title or domain_of(url) or url, lines=wrap_text(text), source=text)


def source_page(page: Page) -> Page:
    """The page's raw markup as lines (view_source)."""
    raw_lines: list[str] = []
    for line in (page.source or "").splitlines():
        raw_lines.extend(textwrap.wrap(line, WRAP_COLUMNS, replace_whitespace=False, drop_whitespace=False) or [""])
    return Page(url=page.url, title=f"Source of {page.title}", lines=raw_lines)


def search_page(query: str, hits: list[SearchHit]) -> Page:
    """The search results: each hit a link with its title and domain, then its snippet."""
    lines: list[str] = []
    links: dict[int, LinkTarget] = {}
    for hit in hits:
        link_id = len(links)
        links[link_id] = LinkTarget(hit.url)
        lines.append(f"【{link_id}†{hit.title}†{domain_of(hit.url)}】")
        lines.extend(wrap_text(" ".join(hit.snippet.split())[:600]))
        lines.append("")
    return Page(url=f"web-search://?q={quote(query)}", title=f"Search results for `{query}`",
                lines=lines[:-1] or [f"No results for {query!r}."], links=links)


def find_page(page: Page, pattern: str, max_results: int = 50) -> Page | None:
    """A page listing the lines of `page` that contain `pattern` (case-insensitive), each a link back."""
    needle = pattern.lower()
    lines: list[str] = []
    links: dict[int, LinkTarget] = {}
    for number, line in enumerate(page.lines):
        if needle in line.lower():
            match_id = len(links)
            links[match_id] = LinkTarget(page.url, loc=number)
            lines.append(f"【{match_id}†match at L{number}】")
            lines.extend(wrap_text(line))
            lines.append("")
            if len(links) >= max_results:
                break
    if not links:
        return None
    return Page(url=page.url, title=f"Find results for text: `{pattern}` in `{page.title}`", lines=lines[:-1],
                links=links)
