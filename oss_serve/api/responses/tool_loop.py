"""The generation loop of one response: generate, and while the model calls a built-in or MCP
tool, run it, append the result and generate again.

Each step's prompt is the previous prompt + the tokens the model generated + the tool's result
message, token for token, so the engine's prefix cache serves the whole conversation so far
(`usage.input_tokens_details.cached_tokens` shows it). The loop ends when the model answers,
calls a function tool (the client runs those), runs out of `max_output_tokens`, or keeps calling
tools after `max_tool_calls` was reached and it was told so.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from contextlib import aclosing

from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseFailedEvent,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
)
from openai_harmony import Message

from oss_serve.api.engine_client import Generator
from oss_serve.api.errors import APIError
from oss_serve.api.responses.prepare import PreparedResponse
from oss_serve.api.responses.response_run import TokenUsage
from oss_serve.engine.sampling_params import SamplingParams
from oss_serve.harmony import encoding as harmony_ids
from oss_serve.harmony import render
from oss_serve.harmony.encoding import get_harmony_encoding
from oss_serve.harmony.parse import DEFAULT_BUILTIN_NAMESPACES, HarmonyOutputParser, ParsedMessage
from oss_serve.tools.base import ToolResult, ToolSession, error_result, tool_result_message

logger = logging.getLogger(__name__)


def parsed_to_harmony(message: ParsedMessage) -> Message:
    """A generated message as it goes back into the conversation."""
    if message.function_name is not None:
        return render.function_call_message(message.function_name, message.text)
    if message.recipient:
        content_type = "<|constrain|>json" if message.content_type == "json" else message.content_type
        return (render.builtin_call_message(message.recipient, message.text, content_type)
                .with_channel(message.channel or render.ANALYSIS))
    return render.assistant_message(message.text, message.channel or render.FINAL)


def continuation_ids(generated: list[int], tool_message: Message) -> list[int]:
    """What follows a step's prompt in the next one: the call as generated (ended by `<|call|>`,
    even where the model wrote `<|return|>`), the tool's message, and the next assistant header."""
    encoding = get_harmony_encoding()
    call = list(generated)
    if call and call[-1] in (harmony_ids.RETURN, harmony_ids.END, harmony_ids.ENDOFTEXT):
        call[-1] = harmony_ids.CALL
    elif not call or call[-1] != harmony_ids.CALL:
        call.append(harmony_ids.CALL)
    return call + encoding.render(tool_message) + [harmony_ids.START, harmony_ids.ASSISTANT]


def limit_message(recipient: str, max_tool_calls: int) -> ToolResult:
    kind = "python" if recipient == "python" else "browser" if recipient.startswith("browser.") else "mcp"
    return error_result(recipient, kind, f"Tool call limit reached: this response may make at most "
                        f"{max_tool_calls} tool calls. Answer with what you have, without calling tools.")


async def run_tool_loop(prepared: PreparedResponse, generator: Generator, context_length: int) -> None:
    """Runs the response to its end state, emitting every event into `run.log`. Cancellation
    (client gone, POST .../cancel) propagates after the run is marked cancelled."""
    run = prepared.run
    tools = prepared.tools
    log = run.log
    run.usage = TokenUsage()
    run.status = "in_progress"
    if not log.events:
        log.emit(ResponseCreatedEvent, response=run.snapshot())
    log.emit(ResponseInProgressEvent, response=run.snapshot())
    session: ToolSession | None = None
    try:
        if tools.executor is not None and tools.namespaces:
            session = await tools.executor.open_session()
            run.assembler.annotate = session.annotate
        for label, listed in tools.mcp_list_tools:
            run.assembler.add_mcp_list_tools(label, listed)
        await _generate_until_done(prepared, generator, context_length, session)
    except APIError as error:
        run.status, run.error = "failed", {"code": "server_error", "message": error.message}
        run.assembler.finish_open_items()  # no item of a failed response stays in_progress
    except BaseException as error:
        run.status = "cancelled"
        run.assembler.finish_open_items()
        if not isinstance(error, Exception):
            raise  # CancelledError, KeyboardInterrupt
        logger.exception("response %s failed", run.response_id)
        run.status, run.error = "failed", {"code": "server_error", "message": f"{type(error).__name__}: {error}"}
    finally:
        run.completed_at = time.time() if run.status == "completed" else None
        if session is not None:
            await session.close()
        await tools.aclose()
        if run.status != "cancelled":
            final_event = {"completed": ResponseCompletedEvent, "incomplete": ResponseIncompleteEvent}.get(
                run.status, ResponseFailedEvent)
            log.emit(final_event, response=run.snapshot())
        log.close()


async def _generate_until_done(prepared: PreparedResponse, generator: Generator, context_length: int,
                               session: ToolSession | None) -> None:
    run, tools, request = prepared.run, prepared.tools, prepared.run.request
    assert run.usage is not None
    prompt_ids = prepared.prompt_ids
    tool_calls_made = 0
    told_limit = False
    for step in itertools.count():
        budget = None if request.max_output_tokens is None else request.max_output_tokens - run.usage.output_tokens
        room = context_length - len(prompt_ids)
        if (budget is not None and budget <= 0) or room <= 0:
            run.status, run.incomplete_reason = "incomplete", "max_output_tokens"
            return
        params = dataclasses.replace(prepared.sampling, max_new_tokens=room if budget is None else min(budget, room),
                                     structured=prepared.first_reply_structured if step == 0
                                     else prepared.sampling.structured)
        generated, messages, finish_reason = await _generate_step(prepared, generator, prompt_ids, params, step)
        last = messages[-1] if messages else None
        if finish_reason == "length":
            run.status, run.incomplete_reason = "incomplete", "max_output_tokens"
            return
        if last is None or last.recipient is None or run.assembler.kind_of(last) == "function_call":
            run.status = "completed"
            return
        # A built-in / MCP call (or a call to a tool this response lacks): answer it, go on.
        item = run.assembler.open_item(len(messages) - 1)
        if request.max_tool_calls is not None and tool_calls_made >= request.max_tool_calls:
            result = limit_message(last.recipient, request.max_tool_calls)
            if item is not None and item.kind != "unknown_tool":
                run.assembler.tool_running(item)
                run.assembler.tool_finished(item, result, executed=False)
            if told_limit:
                run.status, run.incomplete_reason = "incomplete", "max_messages"
                return
            told_limit = True
        elif item is None or item.kind == "unknown_tool" or session is None:
            result = error_result(last.recipient, "mcp", f"Error: no tool named {last.recipient!r} is available "
                                  f"in this conversation ({', '.join(tools.namespace_names) or 'no tools'}).")
        else:
            run.assembler.tool_running(item)
            result = await session.call(last.recipient, last.text)
            run.assembler.tool_finished(item, result)
            tool_calls_made += 1
        tool_message = tool_result_message(result, channel=last.channel or render.ANALYSIS)
        run.conversation.messages.append(tool_message)
        prompt_ids = prompt_ids + continuation_ids(generated, tool_message)


async def _generate_step(prepared: PreparedResponse, generator: Generator, prompt_ids: list[int],
                         params: SamplingParams, step: int) -> tuple[list[int], list[ParsedMessage], str | None]:
    """One generation, its events into the response, its messages into the conversation: (ids, messages, finish)."""
    run, tools = prepared.run, prepared.tools
    assert run.usage is not None
    parser = HarmonyOutputParser(function_names=tools.function_names,
                                 builtin_namespaces=(*DEFAULT_BUILTIN_NAMESPACES, *tools.namespace_names))
    run.assembler.next_step()
    parser.start_assistant_reply()
    generated: list[int] = []
    finish_reason = None
    # The parser makes the text from the token ids: the engine client's detokenizer would be wasted.
    outputs = generator.stream(prompt_ids, params, f"{run.response_id}-{step}", detokenize=False)
    async with aclosing(outputs):
        async for output in outputs:
            generated.extend(output.new_token_ids)
            run.assembler.on_parse_events(parser.feed(output.new_token_ids))
            if output.finished:
                finish_reason = output.finish_reason
                run.usage.input_tokens += output.prompt_tokens
                run.usage.cached_tokens += output.cached_tokens
                run.usage.output_tokens += output.completion_tokens
    run.assembler.on_parse_events(parser.finish())
    run.usage.reasoning_tokens += sum(message.token_count for message in parser.messages if message.is_reasoning)
    run.conversation.messages.extend(parsed_to_harmony(message) for message in parser.messages)
    for index, message in enumerate(parser.messages):
        item = run.assembler.open_item(index)
        if item is not None and item.kind == "function_call":
            run.conversation.call_names[item.call_id] = message.function_name or ""
    return generated, parser.messages, finish_reason
