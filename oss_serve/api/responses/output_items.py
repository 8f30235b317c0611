"""Model output (harmony parse events) and tool results -> Responses output items and the
streaming events that build them, in the order they are generated.

Message kinds -> items: analysis text -> `reasoning`; final / commentary text -> `message`
(output_text, browser citations made into `url_citation` annotations); `functions.*` ->
`function_call` (returned to the client); `python` -> `code_interpreter_call`; `browser.*` ->
`web_search_call`; an MCP namespace -> `mcp_call`. A call to a tool this response cannot run
makes no item: the model gets an error as the tool's output instead.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from openai.types.responses import (
    ResponseCodeInterpreterCallCodeDeltaEvent,
    ResponseCodeInterpreterCallCodeDoneEvent,
    ResponseCodeInterpreterCallCompletedEvent,
    ResponseCodeInterpreterCallInProgressEvent,
    ResponseCodeInterpreterCallInterpretingEvent,
    ResponseCodeInterpreterToolCall,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseFunctionWebSearch,
    ResponseMcpCallArgumentsDeltaEvent,
    ResponseMcpCallArgumentsDoneEvent,
    ResponseMcpCallCompletedEvent,
    ResponseMcpCallFailedEvent,
    ResponseMcpCallInProgressEvent,
    ResponseMcpListToolsCompletedEvent,
    ResponseMcpListToolsInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseOutputTextAnnotationAddedEvent,
    ResponseReasoningItem,
    ResponseReasoningTextDeltaEvent,
    ResponseReasoningTextDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseWebSearchCallCompletedEvent,
    ResponseWebSearchCallInProgressEvent,
    ResponseWebSearchCallSearchingEvent,
)
from openai.types.responses.response_output_item import McpCall, McpListTools
from pydantic import BaseModel

from oss_serve.api.responses.event_log import EventLog
from oss_serve.api.responses.tool_setup import ResponseTools
from oss_serve.harmony.parse import ParsedMessage, ParseEvent
from oss_serve.tools.base import ToolResult, split_recipient

ItemKind = Literal["reasoning", "message", "function_call", "code_interpreter", "web_search", "mcp", "unknown_tool"]
Annotator = Callable[[str], tuple[str, list[dict[str, Any]]]]
# A `【` this far back without its `】` is not a citation after all: stop holding it.
MAX_CITATION_CHARS = 64
CODE_CONTAINER_ID = "local"


def _item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class CitedText:
    """Final-answer text streamed with citations resolved: a `【...` still open is held back so
    that a delta never shows half a citation that later turns into a link."""
    annotate: Annotator
    raw: str = ""
    shown: str = ""
    annotations: list[dict[str, Any]] = field(default_factory=list)

    def add(self, delta: str, *, final: bool = False) -> tuple[str, list[dict[str, Any]]]:
        """-> (new text to show, new annotations)."""
        self.raw += delta
        safe = self.raw
        opening = safe.rfind("【")
        if not final and opening != -1 and "】" not in safe[opening:] and len(safe) - opening < MAX_CITATION_CHARS:
            safe = safe[:opening]
        text, annotations = self.annotate(safe)
        if not text.startswith(self.shown):  # annotation is prefix-stable; guard against surprises
            return "", []
        new_text, self.shown = text[len(self.shown):], text
        new_annotations = annotations[len(self.annotations):]
        self.annotations = annotations
        return new_text, new_annotations


@dataclass
class OpenItem:
    kind: ItemKind
    output_index: int
    item_id: str
    message: ParsedMessage
    text: str = ""
    cited: CitedText | None = None
    call_id: str = ""
    ended: bool = False  # the model's part is over (written out, or cut off)

    @property
    def cut_off(self) -> bool:
        """Generation stopped (length, abort, cancel) before the model ended this message."""
        return self.message.terminator is None


class OutputAssembler:
    """Builds `output` (the final items, in order) and emits the events that build them."""

    def __init__(self, log: EventLog, tools: ResponseTools, *, include_code_outputs: bool) -> None:
        self.log = log
        self.tools = tools
        self.include_code_outputs = include_code_outputs
        self.output: list[BaseModel] = []
        self.annotate: Annotator = lambda text: (text, [])
        self._open: dict[tuple[int, int], OpenItem] = {}  # (loop step, message index) -> item
        self.step = 0

    # --- item kinds ---

    def kind_of(self, message: ParsedMessage) -> ItemKind:
        if message.is_function_call:
            return "function_call" if self.tools.function_tools else "unknown_tool"
        if message.recipient:
            if not self.tools.runs(message.recipient):
                return "unknown_tool"
            namespace, _ = split_recipient(message.recipient)
            if namespace in self.tools.mcp_labels:
                return "mcp"
            return "code_interpreter" if namespace == "python" else "web_search"
        return "reasoning" if message.channel == "analysis" else "message"

    def _add(self, item: BaseModel) -> int:
        self.output.append(item)
        index = len(self.output) - 1
        self.log.emit(ResponseOutputItemAddedEvent, item=item, output_index=index)
        return index

    def _done(self, index: int, item: BaseModel) -> None:
        self.output[index] = item
        self.log.emit(ResponseOutputItemDoneEvent, item=item, output_index=index)

    # --- MCP tool listing, first in the output as OpenAI does ---

    def add_mcp_list_tools(self, server_label: str, tools: list[dict[str, Any]]) -> None:
        item_id = _item_id("mcpl")
        index = self._add(McpListTools(id=item_id, server_label=server_label, tools=[], type="mcp_list_tools"))
        self.log.emit(ResponseMcpListToolsInProgressEvent, item_id=item_id, output_index=index)
        self.log.emit(ResponseMcpListToolsCompletedEvent, item_id=item_id, output_index=index)
        self._done(index, McpListTools(id=item_id, server_label=server_label, tools=tools, type="mcp_list_tools"))

    # --- parse events of model output ---

    def next_step(self) -> None:
        self.step += 1

    def on_parse_events(self, events: list[ParseEvent]) -> None:
        for event in events:
            key = (self.step, event.index)
            if event.kind == "start":
                self._start(key, event.message)
            elif event.kind == "text":
                self._text(self._open[key], event.text)
            else:
                self._end(self._open[key])

    def _start(self, key: tuple[int, int], message: ParsedMessage) -> None:
        kind = self.kind_of(message)
        prefix = {"reasoning": "rs", "message": "msg", "function_call": "fc", "code_interpreter": "ci",
                  "web_search": "ws", "mcp": "mcp", "unknown_tool": "tool"}[kind]
        item = OpenItem(kind, -1, _item_id(prefix), message)
        self._open[key] = item
        if kind == "reasoning":
            item.output_index = self._add(ResponseReasoningItem(id=item.item_id, summary=[], content=[],
                                                                type="reasoning", status="in_progress"))
            self.log.emit(ResponseContentPartAddedEvent, item_id=item.item_id, output_index=item.output_index,
                          content_index=0, part={"type": "reasoning_text", "text": ""})
        elif kind == "message":
            item.cited = CitedText(self.annotate)
            item.output_index = self._add(ResponseOutputMessage(id=item.item_id, content=[], role="assistant",
                                                                status="in_progress", type="message"))
            self.log.emit(ResponseContentPartAddedEvent, item_id=item.item_id, output_index=item.output_index,
                          content_index=0, part=ResponseOutputText(annotations=[], text="", type="output_text"))
        elif kind == "function_call":
            item.call_id = f"call_{uuid.uuid4().hex[:24]}"
            item.output_index = self._add(self._function_call(item, "in_progress"))
        elif kind == "code_interpreter":
            item.output_index = self._add(self._code_call(item, "in_progress", None))
            self.log.emit(ResponseCodeInterpreterCallInProgressEvent, item_id=item.item_id,
                          output_index=item.output_index)
        elif kind == "mcp":
            item.output_index = self._add(self._mcp_call(item, "in_progress"))
            self.log.emit(ResponseMcpCallInProgressEvent, item_id=item.item_id, output_index=item.output_index)
        # web_search: the item needs its action, known once the arguments are complete

    def _text(self, item: OpenItem, delta: str) -> None:
        item.text += delta
        ids = {"item_id": item.item_id, "output_index": item.output_index}
        if item.kind == "reasoning":
            self.log.emit(ResponseReasoningTextDeltaEvent, **ids, content_index=0, delta=delta)
        elif item.kind == "message":
            assert item.cited is not None
            self._emit_text(item, *item.cited.add(delta))
        elif item.kind == "function_call":
            self.log.emit(ResponseFunctionCallArgumentsDeltaEvent, **ids, delta=delta)
        elif item.kind == "code_interpreter":
            self.log.emit(ResponseCodeInterpreterCallCodeDeltaEvent, **ids, delta=delta)
        elif item.kind == "mcp":
            self.log.emit(ResponseMcpCallArgumentsDeltaEvent, **ids, delta=delta)

    def _emit_text(self, item: OpenItem, text: str, annotations: list[dict[str, Any]]) -> None:
        ids = {"item_id": item.item_id, "output_index": item.output_index, "content_index": 0}
        if text:
            self.log.emit(ResponseTextDeltaEvent, **ids, delta=text, logprobs=[])
        assert item.cited is not None
        first = len(item.cited.annotations) - len(annotations)
        for offset, annotation in enumerate(annotations):
            self.log.emit(ResponseOutputTextAnnotationAddedEvent, **ids, annotation_index=first + offset,
                          annotation=annotation)

    def _end(self, item: OpenItem) -> None:
        """The model's part of the item is over; an item cut off is done now, as `incomplete`."""
        item.ended = True
        ids = {"item_id": item.item_id, "output_index": item.output_index}
        status = "incomplete" if item.cut_off else "completed"
        if item.kind == "reasoning":
            self.log.emit(ResponseReasoningTextDoneEvent, **ids, content_index=0, text=item.text)
            part = {"type": "reasoning_text", "text": item.text}
            self.log.emit(ResponseContentPartDoneEvent, **ids, content_index=0, part=part)
            self._done(item.output_index, ResponseReasoningItem(
                id=item.item_id, summary=[], content=[part], type="reasoning", status=status))  # type: ignore[list-item,arg-type]
        elif item.kind == "message":
            assert item.cited is not None
            self._emit_text(item, *item.cited.add("", final=True))
            part = ResponseOutputText(annotations=item.cited.annotations, text=item.cited.shown,  # type: ignore[arg-type]
                                      type="output_text", logprobs=[])
            self.log.emit(ResponseTextDoneEvent, **ids, content_index=0, text=item.cited.shown, logprobs=[])
            self.log.emit(ResponseContentPartDoneEvent, **ids, content_index=0, part=part)
            self._done(item.output_index, ResponseOutputMessage(
                id=item.item_id, content=[part], role="assistant", status=status, type="message"))  # type: ignore[arg-type]
        elif item.kind == "function_call":
            self.log.emit(ResponseFunctionCallArgumentsDoneEvent, **ids, arguments=item.text)
            self._done(item.output_index, self._function_call(item, status))
        elif item.kind == "code_interpreter":
            self.log.emit(ResponseCodeInterpreterCallCodeDoneEvent, **ids, code=item.text)
            self._tool_call_written(item)
        elif item.kind == "mcp":
            self.log.emit(ResponseMcpCallArgumentsDoneEvent, **ids, arguments=item.text)
            self._tool_call_written(item)
        # web_search and unknown tools: nothing streams before the call runs

    def _tool_call_written(self, item: OpenItem) -> None:
        """A built-in or MCP call's code / arguments are complete: the item shows them while the tool
        runs; one cut off will never run and is done."""
        if item.cut_off:
            self._done(item.output_index, self._tool_call(item, "incomplete"))
        else:
            self.output[item.output_index] = self._tool_call(item, "in_progress")

    def finish_open_items(self) -> None:
        """Generation stopped early (cancel, failure): items still open end as `incomplete`, with what
        they carried, including a tool call whose tool never answered."""
        for key, item in list(self._open.items()):
            if key[0] != self.step or item.output_index < 0:
                continue
            if not item.ended:
                self._end(item)
            if getattr(self.output[item.output_index], "status", None) not in ("completed", "incomplete", "failed"):
                self._done(item.output_index, self._tool_call(item, "incomplete"))

    # --- built-in tool calls ---

    def open_item(self, message_index: int) -> OpenItem | None:
        return self._open.get((self.step, message_index))

    def tool_running(self, item: OpenItem) -> None:
        ids = {"item_id": item.item_id, "output_index": item.output_index}
        if item.kind == "code_interpreter":
            self.log.emit(ResponseCodeInterpreterCallInterpretingEvent, **ids)
        elif item.kind == "web_search":
            item.output_index = self._add(self._web_search_call(item, "in_progress", None))
            ids["output_index"] = item.output_index
            self.log.emit(ResponseWebSearchCallInProgressEvent, **ids)
            self.log.emit(ResponseWebSearchCallSearchingEvent, **ids)

    def tool_finished(self, item: OpenItem, result: ToolResult, *, executed: bool = True) -> None:
        """`executed=False`: the call was refused (max_tool_calls) and `result` says so."""
        ids = {"item_id": item.item_id, "output_index": item.output_index}
        failed_status = "failed" if executed else "incomplete"
        if item.kind == "code_interpreter":
            self.log.emit(ResponseCodeInterpreterCallCompletedEvent, **ids)
            outputs = [{"type": "logs", "logs": result.text}] if self.include_code_outputs else None
            timed_out = result.is_error and result.details.timed_out
            self._done(item.output_index, self._code_call(
                item, failed_status if timed_out or not executed else "completed", outputs))
        elif item.kind == "web_search":
            self.log.emit(ResponseWebSearchCallCompletedEvent, **ids)
            self._done(item.output_index, self._web_search_call(
                item, failed_status if result.is_error else "completed", result))
        elif item.kind == "mcp":
            self.log.emit(ResponseMcpCallFailedEvent if result.is_error else ResponseMcpCallCompletedEvent, **ids)
            self._done(item.output_index, self._mcp_call(item, failed_status if result.is_error else "completed",
                                                         result))

    # --- item objects ---

    def _tool_call(self, item: OpenItem, status: str) -> BaseModel:
        """A built-in or MCP call item, without a result."""
        if item.kind == "code_interpreter":
            return self._code_call(item, status, None)
        if item.kind == "mcp":
            return self._mcp_call(item, status)
        return self._web_search_call(item, status, None)

    def _function_call(self, item: OpenItem, status: str) -> ResponseFunctionToolCall:
        return ResponseFunctionToolCall(id=item.item_id, call_id=item.call_id, name=item.message.function_name or "",
                                        arguments=item.text, type="function_call", status=status)  # type: ignore[arg-type]

    def _code_call(self, item: OpenItem, status: str, outputs: list[dict[str, Any]] | None
                   ) -> ResponseCodeInterpreterToolCall:
        return ResponseCodeInterpreterToolCall(id=item.item_id, code=item.text, container_id=CODE_CONTAINER_ID,
                                               outputs=outputs, status=status, type="code_interpreter_call")  # type: ignore[arg-type]

    def _mcp_call(self, item: OpenItem, status: str, result: ToolResult | None = None) -> McpCall:
        label, name = split_recipient(item.message.recipient or "")
        fields: dict[str, Any] = {}
        if result is not None and result.is_error:
            fields["error"] = {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": result.text}]}
        elif result is not None:
            fields["output"] = result.text
        return McpCall(id=item.item_id, arguments=item.text, name=name or "", server_label=label,
                       type="mcp_call", status=status, **fields)  # type: ignore[arg-type]

    def _web_search_call(self, item: OpenItem, status: str, result: ToolResult | None) -> ResponseFunctionWebSearch:
        _, function = split_recipient(item.message.recipient or "")
        try:
            arguments = json.loads(item.text) if item.text.strip() else {}
        except ValueError:
            arguments = {}
        arguments = arguments if isinstance(arguments, dict) else {}
        details = result.details if result is not None else None
        if function == "open":
            target = arguments.get("id")
            action: dict[str, Any] = {"type": "open_page",
                                      "url": (details.url if details and details.url else
                                              target if isinstance(target, str) else None)}
        elif function == "find":
            action = {"type": "find_in_page", "pattern": str(arguments.get("pattern") or ""),
                      "url": (details.url if details and details.url else "") or ""}
        else:
            action = {"type": "search", "query": str(arguments.get("query") or "")}
        return ResponseFunctionWebSearch(id=item.item_id, action=action, status=status,  # type: ignore[arg-type]
                                         type="web_search_call")
