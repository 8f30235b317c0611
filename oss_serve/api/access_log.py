"""One log line per HTTP request (logger `oss_serve.access`): method, path, status, request id, prompt /
output / cached tokens, time to first token and total time. INFO when it succeeded; WARNING with the
reason for a 4xx / 5xx, or for an error met mid-stream. Never a body or a header (so never the API
key), except with --log-requests, which logs request bodies and non-streamed response bodies at DEBUG.

The handlers fill the request's `AccessRecord`, found through a context variable: the engine client
counts tokens as they arrive, the endpoints name the request, the SSE framing notes a mid-stream error."""
from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oss_serve.engine.outputs import StreamOutput

logger = logging.getLogger("oss_serve.access")
# Enough of an error body to read its message; bodies logged with --log-requests are cut here too.
_ERROR_BODY_BYTES = 8192
_LOGGED_BODY_CHARS = 16384
_PROBES = frozenset({"/health", "/metrics"})


@dataclass
class AccessRecord:
    request_id: str | None = None
    started_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    # Per engine request: (prompt tokens, output tokens so far, cached prompt tokens).
    engine_requests: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    error: str | None = None  # the reason a 4xx / 5xx (or a mid-stream error event) was sent

    def observe(self, engine_request_id: str, output: StreamOutput) -> None:
        if self.first_token_at is None and output.new_token_ids:
            self.first_token_at = time.monotonic()
        self.engine_requests[engine_request_id] = (output.prompt_tokens, output.completion_tokens,
                                                   output.cached_tokens)


_current: ContextVar[AccessRecord | None] = ContextVar("oss_serve_access_record", default=None)


def current_record() -> AccessRecord | None:
    return _current.get()


def name_request(request_id: str) -> None:
    """The id the client sees in the response (cmpl-..., chatcmpl-..., resp_..., /generate's rid)."""
    record = _current.get()
    if record is not None:
        record.request_id = request_id


def note_error(message: str) -> None:
    record = _current.get()
    if record is not None:
        record.error = message


class AccessLogMiddleware:
    """Outermost, so that requests refused before routing (401, 413, 503) are logged too."""

    def __init__(self, app: ASGIApp, log_bodies: bool = False) -> None:
        self.app = app
        self.log_bodies = log_bodies
        if log_bodies and logger.getEffectiveLevel() > logging.DEBUG:
            logger.setLevel(logging.DEBUG)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = AccessRecord()
        token = _current.set(record)
        status = 0
        streamed = False
        body = bytearray()  # the response body, kept only where it is read: errors, and with --log-requests
        request_body = bytearray()

        async def logging_receive() -> Message:
            message = await receive()
            if self.log_bodies and message["type"] == "http.request" and len(request_body) < _LOGGED_BODY_CHARS:
                request_body.extend(message.get("body", b""))
            return message

        async def logging_send(message: Message) -> None:
            nonlocal status, streamed
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = dict(message.get("headers") or [])
                streamed = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and not streamed and (status >= 400 or self.log_bodies):
                if len(body) < max(_ERROR_BODY_BYTES, _LOGGED_BODY_CHARS if self.log_bodies else 0):
                    body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, logging_receive if self.log_bodies else receive, logging_send)
        finally:
            _current.reset(token)
            if status >= 400 and record.error is None:
                record.error = _error_message(bytes(body))
            self._log(scope, status, record)
            if self.log_bodies:
                logger.debug("%s request body: %s", record.request_id or "-", _shown(bytes(request_body)))
                if not streamed:
                    logger.debug("%s response body: %s", record.request_id or "-", _shown(bytes(body)))

    @staticmethod
    def _log(scope: Scope, status: int, record: AccessRecord) -> None:
        now = time.monotonic()
        prompt = sum(entry[0] for entry in record.engine_requests.values())
        output = sum(entry[1] for entry in record.engine_requests.values())
        cached = sum(entry[2] for entry in record.engine_requests.values())
        ttft = "-" if record.first_token_at is None else f"{(record.first_token_at - record.started_at) * 1000:.1f}"
        client = scope.get("client")
        line = (f"{client[0] if client else '-'} {scope['method']} {scope['path']} {status or 'no-response'} "
                f"id={record.request_id or '-'} prompt_tokens={prompt} output_tokens={output} "
                f"cached_tokens={cached} ttft_ms={ttft} total_ms={(now - record.started_at) * 1000:.1f}")
        if status >= 400 or status == 0 or record.error is not None:
            logger.warning("%s error=%r", line, record.error or "the client went away before an answer")
        else:  # a load balancer's probes would drown the rest at INFO
            logger.log(logging.DEBUG if scope["path"] in _PROBES else logging.INFO, "%s", line)


def _error_message(body: bytes) -> str | None:
    try:
        return str(json.loads(body)["error"]["message"])[:500]
    except (ValueError, KeyError, TypeError):
        return body[:500].decode(errors="replace") or None


def _shown(body: bytes) -> str:
    text = body.decode(errors="replace")
    return text if len(text) <= _LOGGED_BODY_CHARS else f"{text[:_LOGGED_BODY_CHARS]}... (cut)"
