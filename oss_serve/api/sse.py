"""Server-sent events framing for streamed responses."""
from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from oss_serve.api.access_log import note_error
from oss_serve.api.errors import APIError, error_body

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
# JSON leaves these unescaped, but clients that split lines like str.splitlines() (httpx's
# aiter_lines among them) cut an event in two at them; as escapes they mean the same to a JSON parser.
_LINE_BREAKING = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


def escape_line_separators(body: str) -> str:
    for raw, escaped in _LINE_BREAKING.items():
        if raw in body:
            body = body.replace(raw, escaped)
    return body


def sse_data(payload: BaseModel | dict[str, Any]) -> bytes:
    """One `data: {...}` event. pydantic models drop unset optional fields (the openai types'
    convention), dicts are sent as they are."""
    if isinstance(payload, BaseModel):
        body = payload.model_dump_json(exclude_unset=True)
    else:
        body = json.dumps(payload, ensure_ascii=False)
    return b"data: " + escape_line_separators(body).encode() + b"\n\n"


def sse_error(error: APIError) -> bytes:
    """An error met mid-stream, in the same `{"error": {...}}` shape as a non-streamed error."""
    return sse_data(error_body(error.message, error.status, error.param, error.code))


async def ending_with_done(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`events`, then `[DONE]`. An error met mid-stream, expected or not, becomes one error event
    before `[DONE]`, so a client never sees a stream cut off."""
    try:
        async for event in events:
            yield event
    except APIError as error:
        note_error(error.message)
        yield sse_error(error)
    except Exception as error:  # noqa: BLE001 - the stream ends with an error event, not cut
        logger.exception("streamed request failed")
        note_error(f"Internal error: {type(error).__name__}: {error}")
        yield sse_error(APIError(f"Internal error: {type(error).__name__}: {error}", status=500))
    yield DONE
