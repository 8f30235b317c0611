"""HTTP routes of the Responses API: create, retrieve (optionally streaming its events), delete,
cancel, input items."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from oss_serve.api.access_log import name_request
from oss_serve.api.engine_client import until_disconnected
from oss_serve.api.errors import APIError, error_response
from oss_serve.api.responses.event_log import sse_event
from oss_serve.api.responses.request import ResponsesRequest
from oss_serve.api.responses.response_run import ResponseRun
from oss_serve.api.responses.service import ResponsesService
from oss_serve.api.responses.store import ResponseStoreError


def install_responses_api(app: FastAPI, service: ResponsesService) -> None:
    """Adds the /v1/responses routes to `app`; the service is also kept as `app.state.responses`, for tests to
    look into."""
    app.include_router(build_router(service))
    app.state.responses = service

    @app.exception_handler(ResponseStoreError)
    async def _store_unavailable(_: Request, error: ResponseStoreError) -> JSONResponse:
        return error_response(APIError(str(error), status=503, code="response_store_unavailable"))


def _event_stream(run: ResponseRun, starting_after: int | None = None, *,
                  cancel_on_disconnect: bool) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        try:
            async for event in run.log.follow(starting_after):
                yield sse_event(event)
        finally:
            # A foreground stream's reader is its only consumer: when it leaves, the work stops.
            if cancel_on_disconnect and run.task is not None and not run.task.done():
                run.task.cancel()

    return StreamingResponse(body(), media_type="text/event-stream")


def build_router(service: ResponsesService) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/responses")
    async def create_response(body: ResponsesRequest, request: Request) -> Response:
        loop = await service.open(body)
        run = service.register(loop)
        name_request(run.response_id)
        if body.background:
            service.start_in_background(loop)
            if body.stream:
                return _event_stream(run, cancel_on_disconnect=False)
            return JSONResponse(run.snapshot().model_dump(mode="json", exclude_unset=True, by_alias=True))
        if body.stream:
            service.start_in_background(loop)
            return _event_stream(run, cancel_on_disconnect=True)
        await until_disconnected(service.execute(loop), request.is_disconnected)
        return JSONResponse(run.snapshot().model_dump(mode="json", exclude_unset=True, by_alias=True))

    @router.get("/v1/responses/{response_id}")
    async def retrieve_response(response_id: str, stream: bool = False,
                                starting_after: int | None = None) -> Response:
        if stream:
            return _event_stream(service.live_run(response_id), starting_after, cancel_on_disconnect=False)
        return JSONResponse(service.response_json(response_id))

    @router.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str) -> dict[str, Any]:
        await service.delete(response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    @router.post("/v1/responses/{response_id}/cancel")
    async def cancel_response(response_id: str) -> dict[str, Any]:
        return await service.cancel(response_id)

    @router.get("/v1/responses/{response_id}/input_items")
    async def list_input_items(response_id: str, limit: int = 20, order: Literal["asc", "desc"] = "desc",
                               after: str | None = None) -> dict[str, Any]:
        items = service.input_items(response_id)
        ordered = list(reversed(items)) if order == "desc" else list(items)
        if after is not None:
            ids = [item.get("id") for item in ordered]
            ordered = ordered[ids.index(after) + 1:] if after in ids else []
        page = ordered[:max(1, min(limit, 100))]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(ordered) > len(page)}

    return router
