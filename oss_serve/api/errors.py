"""OpenAI-style error responses: `{"error": {"message", "type", "param", "code"}}`.

Every failure a client can cause is a 400 naming the field, never FastAPI's 422 or a 500.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from oss_serve.harmony.render import UnrenderableText

logger = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """Raised anywhere in a handler; becomes an OpenAI-style error response."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.headers = headers


def error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPE_BY_STATUS.get(status, "server_error"),
                      "param": param, "code": code if code is not None else status}}


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error_body(error.message, error.status, error.param, error.code),
                        status_code=error.status, headers=error.headers)


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _is_union_member_tag(part: object) -> bool:
    """pydantic puts the union member it tried in the error location: `literal['a','b']`,
    `list[int]`, `str`, a model class name. They are not fields."""
    if not isinstance(part, str):
        return False
    return not part.isidentifier() or part in _TYPE_TAGS or part[:1].isupper()


def _validation_param(location: tuple[Any, ...]) -> str | None:
    # ("body", "messages", 0, "content") -> "messages[0].content"
    parts = [part for part in location if part != "body" and not _is_union_member_tag(part)]
    param = ""
    for part in parts:
        param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else str(part))
    return param or None


def _validation_message(error: dict[str, Any]) -> str:
    param = _validation_param(tuple(error.get("loc", ())))
    if error.get("type") == "json_invalid":
        return f"Request body is not valid JSON: {error.get('ctx', {}).get('error', error.get('msg'))}"
    if error.get("type") == "string_unicode" and param is None:  # e.g. a key that is a lone "\ud800"
        return "Request body is not valid JSON text: it has a string with a lone surrogate escape (not valid Unicode)."
    return f"{param}: {error.get('msg')}" if param else str(error.get("msg"))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, error: APIError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return error_response(APIError(_validation_message(first)))
        return error_response(APIError(_validation_message(first),
                                       param=_validation_param(tuple(first.get("loc", ())))))

    @app.exception_handler(UnrenderableText)
    async def _unrenderable(_: Request, error: UnrenderableText) -> JSONResponse:
        return error_response(APIError(f"The prompt cannot be rendered: {error}."))

    @app.exception_handler(json.JSONDecodeError)
    async def _bad_json(_: Request, error: json.JSONDecodeError) -> JSONResponse:
        return error_response(APIError(f"Request body is not valid JSON: {error}"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(APIError(str(error.detail), status=error.status_code))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return error_response(APIError(f"Internal error: {type(error).__name__}: {error}", status=500))
