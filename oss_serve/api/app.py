"""The FastAPI application: routes, API-key check, body size limit, error shapes."""
from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oss_serve.api import native
from oss_serve.api.access_log import AccessLogMiddleware
from oss_serve.api.chat import create_chat_completion
from oss_serve.api.completions import create_completion
from oss_serve.api.errors import APIError, error_body, install_error_handlers
from oss_serve.api.metrics import ServerMetrics
from oss_serve.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
    ParseFunctionCallRequest,
    SeparateReasoningRequest,
)
from oss_serve.api.responses.routes import install_responses_api
from oss_serve.api.responses.service import ResponsesService
from oss_serve.api.state import ServingState
from oss_serve.api.unicode_check import refuse_lone_surrogates
from oss_serve.engine.messages import EngineStats

OPEN_ROUTES = frozenset({"/health"})
# Routes that submit engine requests; --max-queued-requests counts and limits these.
GENERATION_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions", "/generate", "/v1/responses"})
RETRY_AFTER_SECONDS = 1
# Fixed paths a request may be labelled with in the metrics before routing has matched it.
KNOWN_PATHS = OPEN_ROUTES | GENERATION_ROUTES | frozenset({
    "/v1/models", "/health_generate", "/get_model_info", "/get_server_info", "/flush_cache",
    "/separate_reasoning", "/parse_function_call", "/metrics"})


class GuardMiddleware:
    """API key (constant-time compare) on every route but /health, the body size limit, and the
    queue limit (--max-queued-requests) on generation routes.

    Plain ASGI rather than BaseHTTPMiddleware, which would hide client disconnects from
    streaming responses."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_request_bytes: int,
                 metrics: ServerMetrics | None, max_queued_requests: int | None = None,
                 read_engine_stats: Callable[[], EngineStats] | None = None) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.max_request_bytes = max_request_bytes
        self.metrics = metrics
        self.max_queued_requests = max_queued_requests
        self.read_engine_stats = read_engine_stats
        # Counted here, on arrival, because the engine's own queue length arrives a step late:
        # a burst would all be admitted before the engine reported any of it.
        self.generation_requests_in_flight = 0

    def _limited_receive(self, receive: Receive) -> Receive:
        """A chunked body has no Content-Length to check up front: count it as it arrives.
        Raised as an HTTPException so that FastAPI's body parsing passes it on as a 413."""
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_request_bytes:
                    raise StarletteHTTPException(
                        413, f"Request body is over the limit of {self.max_request_bytes} bytes.")
            return message

        return counting_receive

    def _queue_is_full(self) -> bool:
        if self.max_queued_requests is None:
            return False
        running = 0
        if self.read_engine_stats is not None:
            running = self.read_engine_stats().num_running
        return self.generation_requests_in_flight - running >= self.max_queued_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.expected is not None and scope["path"] not in OPEN_ROUTES:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await self._reject(scope, receive, send, 401, "Invalid or missing API key.")
                return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_request_bytes:
            await self._reject(scope, receive, send, 413,
                               f"Request body is {int(length)} bytes; the limit is {self.max_request_bytes}.")
            return
        receive = self._limited_receive(receive)
        generating = scope["path"] in GENERATION_ROUTES and scope["method"] == "POST"
        if generating and self._queue_is_full():
            await self._reject(scope, receive, send, 503,
                               f"The server is overloaded: {self.max_queued_requests} requests are already "
                               "waiting (--max-queued-requests). Retry later.",
                               headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            return
        if generating:
            self.generation_requests_in_flight += 1
        try:
            await self._serve_counted(scope, receive, send)
        finally:
            if generating:
                self.generation_requests_in_flight -= 1

    async def _serve_counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.metrics is None:
            await self.app(scope, receive, send)
            return
        status_holder: dict[str, int] = {}

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.http_requests.labels(_route_label(scope), str(status_holder.get("status", 0))).inc()

    async def _reject(self, scope: Scope, receive: Receive, send: Send, status: int, message: str,
                      headers: dict[str, str] | None = None) -> None:
        response = JSONResponse(error_body(message, status), status_code=status, headers=headers)
        await response(scope, receive, send)
        if self.metrics is not None:
            self.metrics.http_requests.labels(_route_label(scope), str(status)).inc()


def _route_label(scope: Scope) -> str:
    """The matched route's template (`/v1/responses/{response_id}`), never the raw path: raw paths
    (response ids, scanners' random 404s) would add a metric series each, forever. A request
    rejected before routing is labelled by its path only when that is a known fixed route."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if isinstance(template, str):
        return template
    path = scope.get("path", "")
    return path if path in KNOWN_PATHS else "other"


def build_app(state: ServingState, metrics: ServerMetrics | None = None,
              responses: ResponsesService | None = None) -> FastAPI:
    """The HTTP app over `state`. `responses` is the Responses API's service when the caller owns it (the
    server starts and stops its tool servers); otherwise one is made."""
    app = FastAPI(title="oss-serve", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(refuse_lone_surrogates)])
    app.state.serving = state
    install_error_handlers(app)
    install_responses_api(app, responses or ResponsesService(state))
    _add_openai_routes(app, state)
    _add_native_routes(app, state)
    if metrics is not None:
        @app.get("/metrics")
        async def metrics_endpoint() -> Response:
            return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    app.add_middleware(GuardMiddleware, api_key=state.server_args.api_key,
                       max_request_bytes=state.server_args.max_request_bytes, metrics=metrics,
                       max_queued_requests=state.server_args.max_queued_requests,
                       read_engine_stats=state.engine.stats)
    app.add_middleware(AccessLogMiddleware, log_bodies=state.server_args.log_requests)  # outermost
    return app


def _add_openai_routes(app: FastAPI, state: ServingState) -> None:
    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await create_completion(body, request, state)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await create_chat_completion(body, request, state)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return native.models_list(state)


def _add_native_routes(app: FastAPI, state: ServingState) -> None:
    """SGLang's own endpoints."""
    @app.post("/generate")
    async def generate(body: GenerateRequest, request: Request) -> Response:
        return await native.generate(body, request, state)

    @app.get("/health")
    async def health() -> Response:
        if not state.ready:
            return JSONResponse(error_body("The server is starting.", 503), status_code=503)
        try:
            alive = state.engine.stats().engine_alive
        except Exception as error:  # noqa: BLE001 - an engine that does not answer is unhealthy
            raise APIError(f"The engine does not answer: {error}", status=503) from None
        if not alive:
            raise APIError("The engine process is not running.", status=503)
        return Response(status_code=200)

    @app.get("/health_generate")
    async def health_generate() -> Response:
        return await native.health_generate(state)

    @app.get("/get_model_info")
    async def get_model_info() -> dict[str, Any]:
        return native.model_info(state)

    @app.get("/get_server_info")
    async def get_server_info() -> dict[str, Any]:
        return native.server_info(state)

    @app.post("/flush_cache")
    async def flush_cache() -> Response:
        if not await state.engine.flush_cache():
            raise APIError("The cache cannot be flushed while requests are running.")
        return Response(content="Cache flushed.", status_code=200)

    @app.post("/separate_reasoning")
    async def separate_reasoning(body: SeparateReasoningRequest) -> dict[str, Any]:
        return native.separate_reasoning(body)

    @app.post("/parse_function_call")
    async def parse_function_call(body: ParseFunctionCallRequest) -> dict[str, Any]:
        return native.parse_function_call(body)
