"""Turns the model's browser citations `【{cursor}†L{start}(-L{end})?】` into url_citation annotations.

Each citation of a web page becomes a markdown link ` ([domain](url))` in the text, and the
annotation (url, title, start_index, end_index) covers that link, the way hosted web search
returns it. Citations of a cursor that does not exist, or of a search-results page, are left as
written.
"""
from __future__ import annotations

import re
from typing import Any

from oss_serve.tools.browser_page import Page, domain_of

CITATION = re.compile(r"【(\d+)†L(\d+)(?:-L(\d+))?】")

Annotation = dict[str, Any]


def annotate_citations(text: str, pages: list[Page]) -> tuple[str, list[Annotation]]:
    pieces: list[str] = []
    annotations: list[Annotation] = []
    position = 0
    written = 0
    for match in CITATION.finditer(text):
        cursor = int(match.group(1))
        page = pages[cursor] if 0 <= cursor < len(pages) else None
        if page is None or not page.url.startswith(("http://", "https://")):
            continue
        before = text[position:match.start()]
        pieces.append(before)
        written += len(before)
        separator = "" if not before or before.endswith(" ") else " "
        link = f"([{domain_of(page.url)}]({page.url}))"
        start = written + len(separator)
        pieces.append(separator + link)
        written = start + len(link)
        annotations.append({"type": "url_citation", "url": page.url, "title": page.title,
                            "start_index": start, "end_index": written})
        position = match.end()
    pieces.append(text[position:])
    return "".join(pieces), annotations
