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

from oss_serve.api.errors import APIError
from oss_serve.api.responses.event_log import EventLog
from oss_serve.api.responses.output_items import OutputAssembler
from oss_serve.api.responses.prepare import PreparedRequest
from oss_serve.api.responses.request import CODE_INTERPRETER_OUTPUTS
from oss_serve.api.responses.response_run import ResponseRun, TokenUsage
from oss_serve.api.responses.tool_setup import ResponseTools, resolve_tools
from oss_serve.api.sampling import resolve_max_new_tokens
from oss_serve.api.state import ServingState, new_id
from oss_serve.api.structured_outputs import forced_call_output, harmony_structured_output
from oss_serve.engine.sampling_params import SamplingParams
from oss_serve.engine.structured.spec import StructuredOutput
from oss_serve.harmony import encoding as harmony_ids
from oss_serve.harmony import render
from oss_serve.harmony.encoding import get_harmony_encoding
from oss_serve.harmony.parse import DEFAULT_BUILTIN_NAMESPACES, HarmonyOutputParser, ParsedMessage
from oss_serve.tools.base import ToolResult, ToolServer, ToolSession, error_result, tool_kind, tool_result_message

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


class ToolLoop:
    """The one owner of a response while it runs: its tools (the request's own MCP connections and the tool
    session), the step and tool-call counters, the prompt, and the run whose events it writes."""

    def __init__(self, prepared: PreparedRequest, state: ServingState) -> None:
        self.prepared, self.state = prepared, state
        self.tools = ResponseTools()
        self.session: ToolSession | None = None
        self.run: ResponseRun | None = None
        self.prompt_ids: list[int] = []
        self.sampling = prepared.sampling
        self.first_reply_structured: StructuredOutput | None = None  # tool_choice's forced call, else sampling's
        self.tool_calls_made = 0
        self.told_limit = False

    async def open(self, server_tools: ToolServer | None) -> ResponseRun:
        """Connect the request's tools and render the first prompt. Errors (a 400 or 503) still come before any
        event; whatever was connected is closed again."""
        prepared, state, request = self.prepared, self.state, self.prepared.request
        self.tools = await resolve_tools(request, server_tools, mcp_call_timeout_s=state.server_args.tool_timeout,
                                         strict=prepared.strict)
        try:
            settings = render.PromptSettings(instructions=prepared.instructions, reasoning_effort=prepared.effort,
                                             function_tools=self.tools.function_tools,
                                             tool_namespaces=self.tools.namespaces)
            self.prompt_ids = render.render_prompt(prepared.conversation.messages, settings,
                                                   encode_text=state.tokenizer.encode if state.tokenizer else None)
            resolve_max_new_tokens(len(self.prompt_ids), request.max_output_tokens, state.context_length,
                                   prompt_param="input", max_tokens_param="max_output_tokens")
            structured = harmony_structured_output(
                prepared.answer, prepared.strict, reasoning_budget=prepared.reasoning_budget,
                calls_allowed=bool(self.tools.function_tools or self.tools.namespaces))
            self.sampling = dataclasses.replace(prepared.sampling, structured=structured)
            self.first_reply_structured = (
                forced_call_output(self.tools.forced_targets, reasoning_budget=prepared.reasoning_budget)
                if self.tools.forced_targets else structured)
        except BaseException:
            await self.tools.aclose()
            raise
        log = EventLog()
        assembler = OutputAssembler(log, self.tools, include_code_outputs=CODE_INTERPRETER_OUTPUTS in request.include)
        self.run = ResponseRun(response_id=new_id("resp_"), request=request, model_name=state.model_name,
                               instructions=request.instructions, reasoning_effort=prepared.effort,
                               assembler=assembler, log=log, conversation=prepared.conversation,
                               input_items=prepared.input_items)
        return self.run

    async def run_to_end(self) -> None:
        """Runs the response to its end state, emitting every event into `run.log`. Cancellation
        (client gone, POST .../cancel) propagates after the run is marked cancelled."""
        run, tools = self.run, self.tools
        assert run is not None, "open() first"
        run.usage = TokenUsage()
        run.status = "in_progress"
        if not run.log.events:
            run.log.emit(ResponseCreatedEvent, response=run.snapshot())
        run.log.emit(ResponseInProgressEvent, response=run.snapshot())
        try:
            if tools.executor is not None and tools.namespaces:
                self.session = await tools.executor.open_session()
                run.assembler.annotate = self.session.annotate
            for label, listed in tools.mcp_list_tools:
                run.assembler.add_mcp_list_tools(label, listed)
            await self._generate_until_done()
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
            await self._close(run)

    async def _close(self, run: ResponseRun) -> None:
        run.completed_at = time.time() if run.status == "completed" else None
        if self.session is not None:
            await self.session.close()
            self.session = None
        await self.tools.aclose()
        if run.status != "cancelled":
            final_event = {"completed": ResponseCompletedEvent, "incomplete": ResponseIncompleteEvent}.get(
                run.status, ResponseFailedEvent)
            run.log.emit(final_event, response=run.snapshot())
        run.log.close()

    async def _generate_until_done(self) -> None:
        run, request = self.run, self.prepared.request
        assert run is not None and run.usage is not None
        prompt_ids = self.prompt_ids
        for step in itertools.count():
            budget = None if request.max_output_tokens is None else request.max_output_tokens - run.usage.output_tokens
            room = self.state.context_length - len(prompt_ids)
            if (budget is not None and budget <= 0) or room <= 0:
                run.status, run.incomplete_reason = "incomplete", "max_output_tokens"
                return
            params = dataclasses.replace(self.sampling, max_new_tokens=room if budget is None else min(budget, room),
                                         structured=self.first_reply_structured if step == 0
                                         else self.sampling.structured)
            generated, messages, finish_reason = await self._generate_step(prompt_ids, params, step)
            last = messages[-1] if messages else None
            if finish_reason == "length":
                run.status, run.incomplete_reason = "incomplete", "max_output_tokens"
                return
            if last is None or last.recipient is None or run.assembler.kind_of(last) == "function_call":
                run.status = "completed"
                return
            result = await self._answer_call(last, len(messages) - 1)
            if result is None:
                run.status, run.incomplete_reason = "incomplete", "max_messages"
                return
            tool_message = tool_result_message(result, channel=last.channel or render.ANALYSIS)
            run.conversation.messages.append(tool_message)
            prompt_ids = prompt_ids + continuation_ids(generated, tool_message)

    async def _answer_call(self, call: ParsedMessage, message_index: int) -> ToolResult | None:
        """The result of a built-in or MCP call (or of a call to a tool this response lacks); None when the
        model keeps calling after it was told that the limit was reached."""
        run, request = self.run, self.prepared.request
        assert run is not None and call.recipient is not None
        item = run.assembler.open_item(message_index)
        if request.max_tool_calls is not None and self.tool_calls_made >= request.max_tool_calls:
            result = error_result(call.recipient, tool_kind(call.recipient), (
                f"Tool call limit reached: this response may make at most {request.max_tool_calls} tool calls. "
                "Answer with what you have, without calling tools."))
            if item is not None and item.kind != "unknown_tool":
                run.assembler.tool_running(item)
                run.assembler.tool_finished(item, result, executed=False)
            if self.told_limit:
                return None
            self.told_limit = True
            return result
        if item is None or item.kind == "unknown_tool" or self.session is None:
            return error_result(call.recipient, "mcp", f"Error: no tool named {call.recipient!r} is available "
                                f"in this conversation ({', '.join(self.tools.namespace_names) or 'no tools'}).")
        run.assembler.tool_running(item)
        result = await self.session.call(call.recipient, call.text)
        run.assembler.tool_finished(item, result)
        self.tool_calls_made += 1
        return result

    async def _generate_step(self, prompt_ids: list[int], params: SamplingParams, step: int
                             ) -> tuple[list[int], list[ParsedMessage], str | None]:
        """One generation, its events into the response, its messages into the conversation: (ids, messages,
        finish reason)."""
        run, tools = self.run, self.tools
        assert run is not None and run.usage is not None
        parser = HarmonyOutputParser(function_names=tools.function_names,
                                     builtin_namespaces=(*DEFAULT_BUILTIN_NAMESPACES, *tools.namespace_names))
        run.assembler.next_step()
        parser.start_assistant_reply()
        generated: list[int] = []
        finish_reason = None
        # The parser makes the text from the token ids: the engine client's detokenizer would be wasted.
        outputs = self.state.generator.stream(prompt_ids, params, f"{run.response_id}-{step}", detokenize=False)
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
        run.usage.reasoning_tokens += sum(m.token_count for m in parser.messages if m.is_reasoning)
        run.conversation.messages.extend(parsed_to_harmony(message) for message in parser.messages)
        for index, message in enumerate(parser.messages):
            item = run.assembler.open_item(index)
            if item is not None and item.kind == "function_call":
                run.conversation.call_names[item.call_id] = message.function_name or ""
        return generated, parser.messages, finish_reason
