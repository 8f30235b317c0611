"""Responses input items (and an earlier response's conversation) -> harmony history and settings.

A stored response keeps its whole conversation as harmony messages, so `previous_response_id`
continues it exactly; the chain of thought of finished turns is dropped at render time
(`render.drop_finished_turn_analysis`), as harmony requires.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from openai_harmony import Message

from oss_serve.api.errors import APIError
from oss_serve.api.responses.request import ReasoningLevel, ResponsesRequest
from oss_serve.harmony import render

# `Reasoning: high` on a line of its own in the instructions, as gpt-oss examples write it.
REASONING_LINE = re.compile(r"^[ \t]*reasoning:[ \t]*(low|medium|high)[ \t]*$\n?", re.IGNORECASE | re.MULTILINE)
TEXT_PART_TYPES = ("input_text", "output_text", "text", "reasoning_text", "summary_text")


@dataclass
class ConversationState:
    """What a stored response hands to the next one."""
    messages: list[Message] = field(default_factory=list)  # user / assistant / tool messages
    instructions: list[str] = field(default_factory=list)  # from system / developer input items
    call_names: dict[str, str] = field(default_factory=dict)  # function call_id -> function name

    def to_json(self) -> str:
        return json.dumps({"messages": [message.to_dict() for message in self.messages],
                           "instructions": self.instructions, "call_names": self.call_names})

    @classmethod
    def from_json(cls, text: str) -> ConversationState:
        data = json.loads(text)
        return cls([Message.from_dict(message) for message in data["messages"]],
                    list(data["instructions"]), dict(data["call_names"]))


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content
                       if isinstance(part, dict) and part.get("type") in TEXT_PART_TYPES)
    return str(content)


def append_input_items(state: ConversationState, items: list[dict[str, Any]]) -> None:
    """Adds the request's items to the conversation (in place)."""
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise APIError(f"input[{index}] must be an object.", param=f"input[{index}]")
        item_type = item.get("type") or ("message" if "role" in item else None)
        if item_type == "message":
            _append_message(state, item, index)
        elif item_type == "reasoning":
            text = _text_of(item.get("content")) or _text_of(item.get("summary"))
            if text:
                state.messages.append(render.assistant_message(text, render.ANALYSIS))
        elif item_type == "function_call":
            name, call_id = item.get("name"), item.get("call_id")
            if not name:
                raise APIError(f"input[{index}] is a function_call without a name.", param=f"input[{index}].name")
            if call_id:
                state.call_names[call_id] = name
            state.messages.append(render.function_call_message(name, item.get("arguments") or "{}"))
        elif item_type == "function_call_output":
            call_id = item.get("call_id") or ""
            name = state.call_names.get(call_id)
            if name is None:
                raise APIError(f"input[{index}] is a function_call_output whose call_id ({call_id!r}) matches no "
                               "function_call in this conversation.", param=f"input[{index}].call_id")
            output = item.get("output")
            state.messages.append(render.function_result_message(
                name, output if isinstance(output, str) else _text_of(output) or json.dumps(output)))
        elif item_type == "code_interpreter_call":
            state.messages.append(render.builtin_call_message("python", item.get("code") or "", "code"))
            logs = "".join(output.get("logs") or "" for output in item.get("outputs") or [] if isinstance(output, dict))
            state.messages.append(render.builtin_result_message("python", logs or "[no output]"))
        elif item_type == "web_search_call":
            action = item.get("action") or {}
            recipient, arguments = _browser_call_of(action)
            state.messages.append(render.builtin_call_message(recipient, json.dumps(arguments)))
            state.messages.append(render.builtin_result_message(recipient, "[result not kept]"))
        elif item_type == "mcp_call":
            recipient = f"{item.get('server_label')}.{item.get('name')}"
            state.messages.append(render.builtin_call_message(recipient, item.get("arguments") or "{}", "json"))
            state.messages.append(render.builtin_result_message(
                recipient, item.get("output") or json.dumps(item.get("error")) or ""))
        elif item_type in ("mcp_list_tools", "mcp_approval_request", "mcp_approval_response", "item_reference"):
            continue  # nothing the model needs to see again
        else:
            raise APIError(f"input[{index}] has type {item_type!r}, which this server does not accept.",
                           param=f"input[{index}].type")


def _append_message(state: ConversationState, item: dict[str, Any], index: int) -> None:
    role = item.get("role")
    text = _text_of(item.get("content"))
    if role in ("system", "developer"):
        state.instructions.append(text)
    elif role == "user":
        state.messages.append(render.user_message(text))
    elif role == "assistant":
        state.messages.append(render.assistant_message(text, render.FINAL))
    else:
        raise APIError(f"input[{index}] has role {role!r}.", param=f"input[{index}].role")


def _browser_call_of(action: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    kind = action.get("type")
    if kind == "open_page":
        return "browser.open", {"id": action.get("url")}
    if kind in ("find", "find_in_page"):
        return "browser.find", {"pattern": action.get("pattern")}
    return "browser.search", {"query": action.get("query")}


def resolve_reasoning(request: ResponsesRequest, instructions: str | None) -> tuple[ReasoningLevel, str | None]:
    """The reasoning level, from `reasoning.effort`, then `reasoning_effort`, then a
    `Reasoning: ...` line in the instructions (which is taken out of them); medium by default."""
    line_level: ReasoningLevel | None = None
    if instructions:
        found = REASONING_LINE.search(instructions)
        if found:
            line_level = found.group(1).lower()  # type: ignore[assignment]
            instructions = REASONING_LINE.sub("", instructions).strip() or None
    level = (request.reasoning.effort if request.reasoning else None) or request.reasoning_effort or line_level
    return level or "medium", instructions
