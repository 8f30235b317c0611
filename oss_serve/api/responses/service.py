"""The Responses API's state in this process: the store, the tool server, and the responses
still running (or recently finished) whose events can be followed or which can be cancelled."""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import OrderedDict
from typing import Any

from openai.types.responses import ResponseCreatedEvent

from oss_serve.api.errors import APIError
from oss_serve.api.responses.conversation import ConversationState
from oss_serve.api.responses.prepare import prepare_response
from oss_serve.api.responses.request import ResponsesRequest
from oss_serve.api.responses.response_run import ResponseRun
from oss_serve.api.responses.store import ResponseStore, ResponseStoreError
from oss_serve.api.responses.tool_loop import ToolLoop
from oss_serve.api.state import ServingState
from oss_serve.tools.base import ToolServer
from oss_serve.tools.factory import build_tool_server

logger = logging.getLogger(__name__)

# Finished runs kept in memory so their events can still be replayed with ?stream=true.
KEPT_FINISHED_RUNS = 256


class ResponsesService:
    def __init__(self, state: ServingState, store: ResponseStore | None = None,
                 tool_server: ToolServer | None = None) -> None:
        args = state.server_args
        self.state = state
        self._store = store
        self.tool_server = tool_server
        self._tools_started = tool_server is not None or not args.tool_server
        self._tools_lock = asyncio.Lock()
        self.runs: OrderedDict[str, ResponseRun] = OrderedDict()

    @property
    def store(self) -> ResponseStore:
        """Opened on first use, so an app that never serves /v1/responses creates no file."""
        if self._store is None:
            args = self.state.server_args
            self._store = ResponseStore(args.response_store, ttl_seconds=args.response_store_ttl,
                                        max_responses=args.response_store_max)
        return self._store

    @store.setter
    def store(self, store: ResponseStore) -> None:
        self._store = store

    async def server_tools(self) -> ToolServer | None:
        """The `--tool-server` tools, started on first call (the server calls it at launch, in its event loop)."""
        if not self._tools_started:
            async with self._tools_lock:
                if not self._tools_started:
                    server = build_tool_server(self.state.server_args)
                    if server is not None:
                        try:
                            await server.start()
                        except Exception as error:  # noqa: BLE001 - reported to the client, retried next time
                            await _close_quietly(server)  # a half-started server holds processes/connections
                            raise APIError(f"The tool servers could not be started: {error}", status=503) from None
                    self.tool_server = server
                    self._tools_started = True
        return self.tool_server

    async def aclose(self) -> None:
        """At shutdown: stops the tool servers and closes the store (each only if it was opened)."""
        if self.tool_server is not None:
            await _close_quietly(self.tool_server)
            self.tool_server = None
        if self._store is not None:
            self._store.close()
            self._store = None

    # --- creating ---

    async def open(self, request: ResponsesRequest) -> ToolLoop:
        """A checked request with its tools connected and its run made; nothing runs yet."""
        previous = None
        if request.previous_response_id:
            previous = self.conversation_of(request.previous_response_id)
        loop = ToolLoop(prepare_response(request, self.state, previous), self.state)
        await loop.open(await self.server_tools())
        return loop

    def conversation_of(self, response_id: str) -> ConversationState:
        live = self.runs.get(response_id)
        if live is not None and not live.finished:
            raise APIError(f"The response '{response_id}' is still {live.status}; continue it once it has finished.",
                           param="previous_response_id")
        stored = self.store.get(response_id)
        if stored is None:
            raise APIError(f"Previous response with id '{response_id}' not found.", param="previous_response_id",
                           code="previous_response_not_found")
        return ConversationState.from_json(stored.conversation_json)

    def register(self, loop: ToolLoop) -> ResponseRun:
        run = loop.run
        assert run is not None
        run.input_items = [_with_id(item) for item in run.input_items]
        self.runs[run.response_id] = run
        self._forget_old_runs()
        if run.request.background:
            run.log.emit(ResponseCreatedEvent, response=run.snapshot())
            self.persist(run)
        return run

    async def execute(self, loop: ToolLoop) -> None:
        """Runs the loop; the outcome (including a cancellation) is stored."""
        run = loop.run
        assert run is not None
        try:
            await loop.run_to_end()
        finally:
            self.persist(run)
            if not run.request.store:
                self.runs.pop(run.response_id, None)  # nothing to retrieve later

    def start_in_background(self, loop: ToolLoop) -> asyncio.Task[None]:
        assert loop.run is not None
        loop.run.task = asyncio.create_task(self.execute(loop))
        return loop.run.task

    def persist(self, run: ResponseRun) -> None:
        """Saves the run if it asked to be stored. A broken store costs the stored copy, not the
        response: the client still gets it, and later store reads report the store's error."""
        if not run.request.store:
            return
        try:
            self.store.save(run.response_id, run.created_at,
                            run.snapshot().model_dump_json(exclude_unset=True, by_alias=True),
                            json.dumps(run.input_items), run.conversation.to_json())
        except ResponseStoreError as error:
            logger.error("response %s was not stored: %s", run.response_id, error)

    def _forget_old_runs(self) -> None:
        finished = [key for key, run in self.runs.items() if run.finished]
        for key in finished[:max(0, len(finished) - KEPT_FINISHED_RUNS)]:
            del self.runs[key]

    # --- reading ---

    def response_json(self, response_id: str) -> dict[str, Any]:
        live = self.runs.get(response_id)
        if live is not None:
            return live.snapshot().model_dump(mode="json", exclude_unset=True, by_alias=True)
        stored = self.store.get(response_id)
        if stored is None:
            raise _not_found(response_id)
        return json.loads(stored.response_json)

    def input_items(self, response_id: str) -> list[dict[str, Any]]:
        live = self.runs.get(response_id)
        if live is not None:
            return live.input_items
        stored = self.store.get(response_id)
        if stored is None:
            raise _not_found(response_id)
        return json.loads(stored.input_items_json)

    def live_run(self, response_id: str) -> ResponseRun:
        run = self.runs.get(response_id)
        if run is None:
            if self.store.get(response_id) is None:
                raise _not_found(response_id)
            raise APIError(f"The events of response '{response_id}' are no longer kept; retrieve it without "
                           "stream=true.", param="stream")
        return run

    # --- changing ---

    async def delete(self, response_id: str) -> None:
        run = self.runs.pop(response_id, None)
        if run is not None and run.task is not None and not run.task.done():
            # Awaited: the task's `finally` persists the run, which would bring a deleted response back.
            run.task.cancel()
            await asyncio.gather(run.task, return_exceptions=True)
        if not self.store.delete(response_id) and run is None:
            raise _not_found(response_id)

    async def cancel(self, response_id: str) -> dict[str, Any]:
        run = self.runs.get(response_id)
        if run is None:
            return self.response_json(response_id)  # 404, or a finished response as it is
        if run.task is not None and not run.task.done():
            run.task.cancel()
            await asyncio.gather(run.task, return_exceptions=True)
        return run.snapshot().model_dump(mode="json", exclude_unset=True, by_alias=True)


async def _close_quietly(server: ToolServer) -> None:
    try:
        await server.aclose()
    except Exception:  # noqa: BLE001 - the start error is the one reported
        logger.warning("closing the tool servers after a failed start failed", exc_info=True)


def _with_id(item: dict[str, Any]) -> dict[str, Any]:
    """Input items as /input_items lists them: each with an id, messages with typed content."""
    item = dict(item)
    if (item.get("type") or "message") == "message" and "role" in item:
        item["type"] = "message"
        content = item.get("content")
        if isinstance(content, str):
            part_type = "output_text" if item["role"] == "assistant" else "input_text"
            item["content"] = [{"type": part_type, "text": content}]
        item.setdefault("status", "completed")
    item.setdefault("id", f"{'msg' if item.get('type') == 'message' else 'item'}_{uuid.uuid4().hex}")
    return item


def _not_found(response_id: str) -> APIError:
    return APIError(f"Response with id '{response_id}' not found.", status=404, param="response_id",
                    code="response_not_found")
