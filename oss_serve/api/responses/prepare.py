"""The checks of a Responses request that need nothing but the request (and the previous response's
conversation): the model, text.format, strict tools, sampling, the conversation. No side effects: tools are
connected and the prompt rendered when the run opens (`ToolLoop.open`), still before any event is sent."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from oss_serve.api.errors import APIError
from oss_serve.api.responses.conversation import ConversationState, append_input_items, resolve_reasoning
from oss_serve.api.responses.request import ResponsesRequest
from oss_serve.api.sampling import validated
from oss_serve.api.state import ServingState
from oss_serve.api.structured_outputs import (
    AnswerFormat,
    StrictFunction,
    answer_format,
    max_reasoning_tokens,
    strict_function_grammars,
    with_format_instructions,
)
from oss_serve.engine.sampling_params import SamplingParams
from oss_serve.engine.structured.spec import GrammarSpec
from oss_serve.harmony.encoding import stop_token_ids_for_assistant
from oss_serve.harmony.render import ReasoningLevel


@dataclass
class PreparedRequest:
    """A Responses request checked and turned into a conversation, with nothing connected or started yet."""
    request: ResponsesRequest
    conversation: ConversationState
    input_items: list[dict[str, Any]]
    instructions: str | None
    effort: ReasoningLevel
    answer: AnswerFormat | None  # text.format
    strict: dict[str, GrammarSpec]  # the strict function tools' argument grammars, by name
    reasoning_budget: int | None
    sampling: SamplingParams  # max_new_tokens is set per loop step


def prepare_response(request: ResponsesRequest, state: ServingState,
                     previous: ConversationState | None) -> PreparedRequest:
    """Every check that needs no tool server, in the order a client sees its 400s."""
    state.check_model(request.model)
    answer = answer_format(request.text.format.model_dump() if request.text and request.text.format else None,
                           param="text.format", nested=False)
    strict = strict_function_grammars(
        StrictFunction(tool.get("name") or "", tool.get("parameters"), f"tools[{index}].parameters")
        for index, tool in enumerate(request.tools) if tool.get("type") == "function" and tool.get("strict") is True)
    if request.background and not request.store:
        raise APIError("background responses must be stored (store=true).", param="store")
    sampling = SamplingParams(
        max_new_tokens=None,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        top_k=state.default_params.top_k if request.top_k is None else request.top_k,
        seed=request.seed, stop_token_ids=stop_token_ids_for_assistant(), skip_special_tokens=False)
    validated(sampling, state.vocab_size)
    conversation = ConversationState(list(previous.messages), list(previous.instructions),
                                     dict(previous.call_names)) if previous else ConversationState()
    input_items = request.input_items()
    append_input_items(conversation, input_items)
    if not conversation.messages:
        raise APIError("input must contain at least one item.", param="input")
    instructions_text = "\n\n".join(text for text in [request.instructions, *conversation.instructions] if text)
    effort, instructions = resolve_reasoning(request, instructions_text or None)
    return PreparedRequest(request, conversation, input_items, with_format_instructions(instructions, answer), effort,
                           answer, strict, max_reasoning_tokens(request.model_extra), sampling)
