"""A chat completions request -> harmony prompt ids, and what the engine must hold the reply to.

tool_choice is enforced by what the model may write, not by asking it:
- a named function, or "required": the reply is constrained end to end (see
  structured_outputs.py): the model may reason first, then must call that function (or one of
  the given functions) with JSON arguments, and the call ends the reply;
- "none": no function is shown to the model, and any call it still writes is dropped.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from openai_harmony import Message

from oss_serve.api.errors import APIError
from oss_serve.api.protocol import ChatCompletionRequest, ChatMessageIn, NamedToolChoice
from oss_serve.api.structured_outputs import (
    StrictFunction,
    answer_format,
    forced_call_output,
    function_call_target,
    harmony_structured_output,
    max_reasoning_tokens,
    strict_function_grammars,
    with_format_instructions,
)
from oss_serve.engine.structured.spec import StructuredOutput
from oss_serve.harmony import render

ToolChoiceMode = Literal["none", "auto", "required", "named"]


@dataclass
class ChatPrompt:
    prompt_ids: list[int]
    function_names: list[str] = field(default_factory=list)
    tool_choice: ToolChoiceMode = "auto"
    structured: StructuredOutput | None = None  # response_format, strict tools or a forced call, for the engine


def _tool_choice_mode(request: ChatCompletionRequest) -> tuple[ToolChoiceMode, str | None]:
    names = [tool.function.name for tool in request.tools or []]
    choice = request.tool_choice
    if choice is None:
        return ("auto" if names else "none"), None
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise APIError(f"tool_choice names the function '{choice.function.name}', which is not in tools "
                           f"({', '.join(names) or 'none given'}).", param="tool_choice")
        return "named", choice.function.name
    if choice == "required" and not names:
        raise APIError("tool_choice is 'required' but no tools were given.", param="tool_choice")
    return choice, None


def _history(messages: list[ChatMessageIn]) -> tuple[list[Message], list[str]]:
    """Harmony messages for the conversation, and the instructions from system/developer turns."""
    history: list[Message] = []
    instructions: list[str] = []
    call_names: dict[str, str] = {}
    for index, message in enumerate(messages):
        if message.role in ("system", "developer"):
            instructions.append(message.text())
        elif message.role == "user":
            history.append(render.user_message(message.text()))
        elif message.role == "assistant":
            reasoning = message.reasoning_content or message.reasoning
            if reasoning:
                history.append(render.assistant_message(reasoning, render.ANALYSIS))
            if message.tool_calls:
                if message.text():  # a preamble said before the calls
                    history.append(render.assistant_message(message.text(), render.COMMENTARY))
                for call in message.tool_calls:
                    if call.id:
                        call_names[call.id] = call.function.name
                    history.append(render.function_call_message(call.function.name, call.function.arguments))
            elif message.text():
                history.append(render.assistant_message(message.text(), render.FINAL))
        else:  # tool
            name = call_names.get(message.tool_call_id or "") or message.name
            if not name:
                raise APIError(f"messages[{index}] is a tool result whose tool_call_id "
                               f"({message.tool_call_id!r}) matches no earlier tool call.",
                               param=f"messages[{index}].tool_call_id")
            history.append(render.function_result_message(name, message.text()))
    return history, instructions


def build_chat_prompt(request: ChatCompletionRequest,
                      encode_text: Callable[[str], list[int]] | None = None) -> ChatPrompt:
    if not request.messages:
        raise APIError("messages must contain at least one message.", param="messages")
    answer = answer_format(request.response_format.model_dump() if request.response_format else None,
                           param="response_format", nested=True)
    mode, named_function = _tool_choice_mode(request)
    history, instructions = _history(request.messages)
    function_tools = [] if mode == "none" else [
        render.FunctionTool(tool.function.name, tool.function.description or "", tool.function.parameters)
        for tool in request.tools or []]
    settings = render.PromptSettings(
        instructions=with_format_instructions("\n\n".join(text for text in instructions if text) or None, answer),
        reasoning_effort=request.reasoning_effort or "medium",
        function_tools=function_tools,
    )
    prompt_ids = render.render_prompt(history, settings, encode_text=encode_text)
    strict_tools = [] if mode == "none" else [
        (index, tool) for index, tool in enumerate(request.tools or [])
        if (tool.function.model_extra or {}).get("strict")]
    strict = strict_function_grammars(
        StrictFunction(tool.function.name, tool.function.parameters, f"tools[{index}].function.parameters")
        for index, tool in strict_tools)
    reasoning_budget = max_reasoning_tokens(request.model_extra)
    if mode in ("named", "required"):
        structured = forced_call_output(
            [function_call_target(tool.name, tool.parameters, strict) for tool in function_tools
             if mode == "required" or tool.name == named_function], reasoning_budget=reasoning_budget)
    else:
        structured = harmony_structured_output(answer, strict, reasoning_budget=reasoning_budget,
                                               calls_allowed=bool(function_tools))
    return ChatPrompt(prompt_ids, [tool.name for tool in function_tools], mode, structured)
