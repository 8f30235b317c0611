"""Server-sent events, parsed line by line as they arrive (the WHATWG event-stream rules that
matter to LLM servers: `event:` and `data:` fields, comments, blank-line dispatch)."""
from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass
class SSEEvent:
    data: str
    event: str | None = None


class SSEParser:
    def __init__(self) -> None:
        self._event_name: str | None = None
        self._data_lines: list[str] = []

    def feed_line(self, line: str) -> SSEEvent | None:
        """Feed one line (without or with its line ending); returns an event when one completes."""
        line = line.rstrip("\r\n")
        if not line:
            return self.finish()
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data_lines.append(value)
        elif field == "event":
            self._event_name = value
        return None

    def finish(self) -> SSEEvent | None:
        """The pending event: dispatched at a blank line, or at the end of a stream that ended without one."""
        if not self._data_lines:
            self._event_name = None
            return None
        event = SSEEvent(data="\n".join(self._data_lines), event=self._event_name)
        self._data_lines = []
        self._event_name = None
        return event


# The event-stream format ends lines with CRLF, LF or CR only: str.splitlines() (and httpx's
# aiter_lines) would also split at U+2028, U+0085 and others, which JSON may carry unescaped.
_LINE_END = re.compile(r"\r\n|\r|\n")


async def iter_sse_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Lines of an event stream from its raw byte chunks, split as the format says."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *lines, pending = re.split(rb"\r\n|\r(?!$)|\n", pending)
        for line in lines:
            yield line.decode("utf-8", "replace")
    if pending:
        yield pending.rstrip(b"\r").decode("utf-8", "replace")


def parse_sse_text(text: str) -> list[SSEEvent]:
    """All events of a complete stream body."""
    parser = SSEParser()
    events = [event for line in _LINE_END.split(text) if (event := parser.feed_line(line)) is not None]
    if (last := parser.finish()) is not None:
        events.append(last)
    return events
