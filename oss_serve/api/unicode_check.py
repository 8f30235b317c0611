"""A request body whose JSON has a lone surrogate escape (`"\\ud800"`) is refused whole: Python's JSON parser
accepts it, but the string is not Unicode text, so it would fail later wherever it is encoded (an error
message echoing it, a stored response, the tokenizer)."""
from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request

from oss_serve.api.errors import APIError

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(key) or _has_lone_surrogate(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(item) for item in value)
    return False


async def refuse_lone_surrogates(request: Request) -> None:
    """An app-wide dependency; the body is read once (FastAPI reuses it) and parsed again only when it
    holds a surrogate escape at all (a valid pair is fine)."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    body = await request.body()
    if not _SURROGATE_ESCAPE.search(body):
        return
    try:
        parsed = json.loads(body)
    except ValueError:
        return  # not JSON: the body's own parsing says so
    if _has_lone_surrogate(parsed):
        raise APIError("Request body is not valid JSON text: it has a string with a lone surrogate escape "
                       "(\\ud800-\\udfff without its pair), which is not Unicode.")
