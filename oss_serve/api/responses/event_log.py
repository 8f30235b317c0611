"""The numbered event stream of one response: kept for replay (`GET ?stream=true&starting_after=N`)
and followed live by any number of readers.

Events are the `openai.types.responses` models themselves, built (and so validated) when
emitted; `sequence_number` is the event's position in the log.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from oss_serve.api.sse import escape_line_separators


class EventLog:
    def __init__(self) -> None:
        self.events: list[BaseModel] = []
        self.closed = False
        self._changed = asyncio.Event()

    def emit(self, event_class: type[BaseModel], **fields: Any) -> BaseModel:
        event_type = event_class.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
        event = event_class(type=event_type, sequence_number=len(self.events), **fields)
        self.events.append(event)
        self._wake()
        return event

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        # Readers wait on the current Event; a fresh one is armed for the next change.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def follow(self, starting_after: int | None = None) -> AsyncIterator[BaseModel]:
        """Events after `starting_after` (all when None), then new ones until the log closes."""
        # A negative starting_after (a client's typo) means from the start, not from the end.
        position = 0 if starting_after is None else max(0, starting_after + 1)
        while True:
            changed = self._changed
            while position < len(self.events):
                yield self.events[position]
                position += 1
            if self.closed:
                return
            await changed.wait()


def sse_event(event: BaseModel) -> bytes:
    """`event: <type>` / `data: <json>` framing, as OpenAI streams Responses events."""
    body = event.model_dump_json(exclude_unset=True, by_alias=True)
    return f"event: {event.type}\ndata: ".encode() + escape_line_separators(body).encode() + b"\n\n"
