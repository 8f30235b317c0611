"""One response while it exists in this process: its request, event log, output, usage, status,
and the `Response` object that describes it at any moment."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from openai.types.responses import Response, ResponseUsage
from openai.types.responses.response_text_config import ResponseTextConfig
from pydantic import ValidationError

from oss_serve.api.responses.conversation import ConversationState
from oss_serve.api.responses.event_log import EventLog
from oss_serve.api.responses.output_items import OutputAssembler
from oss_serve.api.responses.request import ResponsesRequest

ResponseStatus = Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
FINAL_STATUSES = frozenset({"completed", "incomplete", "failed", "cancelled"})


@dataclass
class TokenUsage:
    """Summed over the loop's generation steps."""
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    def to_api(self) -> ResponseUsage:
        return ResponseUsage(
            input_tokens=self.input_tokens,
            input_tokens_details={"cached_tokens": self.cached_tokens, "cache_write_tokens": 0},  # type: ignore[arg-type]
            output_tokens=self.output_tokens,
            output_tokens_details={"reasoning_tokens": self.reasoning_tokens},  # type: ignore[arg-type]
            total_tokens=self.input_tokens + self.output_tokens)


@dataclass
class ResponseRun:
    response_id: str
    request: ResponsesRequest
    model_name: str
    instructions: str | None
    reasoning_effort: str
    assembler: OutputAssembler
    log: EventLog
    conversation: ConversationState
    input_items: list[dict[str, Any]]
    created_at: float = field(default_factory=time.time)
    status: ResponseStatus = "queued"
    usage: TokenUsage | None = None
    incomplete_reason: str | None = None
    error: dict[str, str] | None = None
    completed_at: float | None = None
    task: asyncio.Task[None] | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    def snapshot(self) -> Response:
        """The Response object as it stands now."""
        request = self.request
        fields: dict[str, Any] = {
            "id": self.response_id, "object": "response", "created_at": self.created_at,
            "model": self.model_name, "status": self.status, "output": list(self.assembler.output),
            "instructions": self.instructions, "tools": [_echo_tool(tool) for tool in request.tools],
            "tool_choice": request.tool_choice, "parallel_tool_calls": request.parallel_tool_calls,
            "max_output_tokens": request.max_output_tokens, "max_tool_calls": request.max_tool_calls,
            "temperature": 1.0 if request.temperature is None else request.temperature,
            "top_p": 1.0 if request.top_p is None else request.top_p,
            "previous_response_id": request.previous_response_id, "background": request.background,
            "metadata": request.metadata or {}, "reasoning": {"effort": self.reasoning_effort},
            "text": _echo_text(request),
            "usage": self.usage.to_api() if self.usage is not None else None,
            "incomplete_details": {"reason": self.incomplete_reason} if self.incomplete_reason else None,
            "error": self.error, "completed_at": self.completed_at,
        }
        return Response.model_validate(fields)


def _echo_text(request: ResponsesRequest) -> dict[str, Any]:
    """The request's `text` setting (its format: text, json_schema or json_object), as given."""
    text = request.text.model_dump(exclude_none=True) if request.text is not None else {}
    fmt = text.setdefault("format", {"type": "text"})
    if fmt.get("type") == "json_schema":  # the Response schema wants a name and an object schema
        fmt.setdefault("name", "response")  # the name answer_format uses too
        if isinstance(fmt.get("schema"), str):
            try:
                fmt["schema"] = json.loads(fmt["schema"])
            except ValueError:
                pass
    try:
        ResponseTextConfig.model_validate(text)
    except ValidationError:  # an echo must never fail the response; the format was accepted already
        return {"format": {"type": fmt.get("type", "text")}} if fmt.get("type") != "json_schema" else {
            "format": {"type": "json_schema", "name": fmt.get("name") or "response", "schema": {}}}
    return text


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """The request's tool as the Response reports it (fields the schema needs filled in)."""
    echoed = dict(tool)
    if echoed.get("type") == "code_interpreter":
        echoed.setdefault("container", {"type": "auto"})
    if echoed.get("type") == "function":
        echoed.setdefault("parameters", None)
        echoed.setdefault("strict", None)
    if echoed.get("type") == "mcp":
        echoed.pop("headers", None)  # credentials are not echoed back
    return echoed
