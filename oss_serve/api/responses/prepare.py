"""Everything about a request that can fail with a 400 happens here, before any event is sent:
the model, text.format, tools, the conversation (with `previous_response_id`) and the first
prompt's length."""
from __future__ import annotations

from dataclasses import dataclass

from oss_serve.api.errors import APIError
from oss_serve.api.responses.conversation import ConversationState, append_input_items, resolve_reasoning
from oss_serve.api.responses.event_log import EventLog
from oss_serve.api.responses.output_items import OutputAssembler
from oss_serve.api.responses.request import CODE_INTERPRETER_OUTPUTS, ResponsesRequest
from oss_serve.api.responses.response_run import ResponseRun
from oss_serve.api.responses.tool_setup import ResponseTools, resolve_tools
from oss_serve.api.sampling import resolve_max_new_tokens, validated
from oss_serve.api.state import ServingState, new_id
from oss_serve.api.structured_outputs import (
    StrictFunction,
    answer_format,
    forced_call_output,
    harmony_structured_output,
    max_reasoning_tokens,
    strict_function_grammars,
    with_format_instructions,
)
from oss_serve.engine.sampling_params import SamplingParams
from oss_serve.engine.structured.spec import StructuredOutput
from oss_serve.harmony import render
from oss_serve.harmony.encoding import stop_token_ids_for_assistant
from oss_serve.tools.base import ToolServer


@dataclass
class PreparedResponse:
    run: ResponseRun
    tools: ResponseTools
    settings: render.PromptSettings
    prompt_ids: list[int]
    sampling: SamplingParams  # max_new_tokens is set per loop step
    first_reply_structured: StructuredOutput | None  # tool_choice's forced call, else sampling's


async def prepare_response(request: ResponsesRequest, state: ServingState, server_tools: ToolServer | None,
                           previous: ConversationState | None) -> PreparedResponse:
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
    instructions = with_format_instructions(instructions, answer)

    reasoning_budget = max_reasoning_tokens(request.model_extra)  # may 400: before MCP servers are connected
    tools = await resolve_tools(request, server_tools, mcp_call_timeout_s=state.server_args.tool_timeout,
                                strict=strict)
    try:
        settings = render.PromptSettings(instructions=instructions, reasoning_effort=effort,
                                         function_tools=tools.function_tools, tool_namespaces=tools.namespaces)
        prompt_ids = render.render_prompt(conversation.messages, settings,
                                          encode_text=state.tokenizer.encode if state.tokenizer else None)
        resolve_max_new_tokens(len(prompt_ids), request.max_output_tokens, state.context_length,
                               prompt_param="input", max_tokens_param="max_output_tokens")
        sampling.structured = harmony_structured_output(
            answer, strict, reasoning_budget=reasoning_budget,
            calls_allowed=bool(tools.function_tools or tools.namespaces))
        first_reply_structured = (forced_call_output(tools.forced_targets, reasoning_budget=reasoning_budget)
                                  if tools.forced_targets else sampling.structured)
    except BaseException:
        await tools.aclose()
        raise
    log = EventLog()
    assembler = OutputAssembler(log, tools, include_code_outputs=CODE_INTERPRETER_OUTPUTS in request.include)
    run = ResponseRun(response_id=new_id("resp_"), request=request, model_name=state.model_name,
                      instructions=request.instructions, reasoning_effort=effort, assembler=assembler, log=log,
                      conversation=conversation, input_items=input_items)
    return PreparedResponse(run, tools, settings, prompt_ids, sampling, first_reply_structured)
