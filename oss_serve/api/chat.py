"""POST /v1/chat/completions: harmony prompt in, reasoning / content / tool_calls out."""
from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat import chat_completion as completion_types
from openai.types.chat import chat_completion_chunk as chunk_types
from openai.types.chat.chat_completion_message_tool_call import ChatCompletionMessageToolCall, Function
from openai.types.chat.chat_completion_token_logprob import ChatCompletionTokenLogprob, TopLogprob

from oss_serve.api.access_log import name_request
from oss_serve.api.chat_conversation import ChatPrompt, build_chat_prompt
from oss_serve.api.engine_client import collect_until_disconnected
from oss_serve.api.protocol import ChatCompletionRequest
from oss_serve.api.sampling import build_sampling_params, resolve_max_new_tokens
from oss_serve.api.sse import ending_with_done, sse_data
from oss_serve.api.state import ServingState, TextTokenizer, new_id
from oss_serve.api.usage import make_usage
from oss_serve.engine.outputs import StreamOutput, TokenLogprob
from oss_serve.engine.sampling_params import SamplingParams
from oss_serve.harmony.encoding import stop_token_ids_for_assistant
from oss_serve.harmony.parse import HarmonyOutputParser, ParseEvent


@dataclass
class _ToolCall:
    id: str
    name: str
    arguments: str = ""


@dataclass
class _DeltaParts:
    """What one batch of parser events adds to a choice."""
    reasoning: str = ""
    content: str = ""
    tool_calls: list[chunk_types.ChoiceDeltaToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of the content tokens among them

    def empty(self) -> bool:
        return not (self.reasoning or self.content or self.tool_calls)


@dataclass
class _ChatChoice:
    """One choice: its parser and everything parsed so far."""
    parser: HarmonyOutputParser
    allow_tool_calls: bool
    inline_reasoning: bool  # separate_reasoning=false: reasoning goes into content
    reasoning: str = ""
    content: str = ""
    tool_calls: list[_ToolCall] = field(default_factory=list)
    call_index_by_message: dict[int, int] = field(default_factory=dict)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    matched_stop: int | str | None = None
    completion_tokens: int = 0
    cached_tokens: int = 0

    def apply(self, events: list[ParseEvent], parts: _DeltaParts | None = None) -> _DeltaParts:
        """Take in parser events; what they add goes into `parts` (a new one by default), returned."""
        parts = _DeltaParts() if parts is None else parts
        for event in events:
            message = event.message
            if message.is_function_call:
                if not self.allow_tool_calls:
                    continue
                self._apply_call_event(event, parts)
            elif event.kind == "text":
                if message.is_reasoning and not self.inline_reasoning:
                    self.reasoning += event.text
                    parts.reasoning += event.text
                else:
                    self.content += event.text
                    parts.content += event.text
        return parts

    def _apply_call_event(self, event: ParseEvent, parts: _DeltaParts) -> None:
        if event.kind == "start":
            call = _ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", name=event.message.function_name or "")
            self.call_index_by_message[event.index] = len(self.tool_calls)
            self.tool_calls.append(call)
            parts.tool_calls.append(chunk_types.ChoiceDeltaToolCall(
                index=len(self.tool_calls) - 1, id=call.id, type="function",
                function=chunk_types.ChoiceDeltaToolCallFunction(name=call.name, arguments="")))
        elif event.kind == "text":
            call_index = self.call_index_by_message[event.index]
            self.tool_calls[call_index].arguments += event.text
            parts.tool_calls.append(chunk_types.ChoiceDeltaToolCall(
                index=call_index, function=chunk_types.ChoiceDeltaToolCallFunction(arguments=event.text)))

    def add(self, output: StreamOutput) -> _DeltaParts:
        if output.new_logprobs is None:
            parts = self.apply(self.parser.feed(output.new_token_ids))
        else:  # a token at a time, to keep the logprobs of the tokens that make `content` only
            parts, kept = _DeltaParts(), []
            for token_id, logprob in zip(output.new_token_ids, output.new_logprobs):
                message = self.parser.open_message
                count = message.token_count if message is not None else -1
                self.apply(self.parser.feed([token_id]), parts)
                if (message is not None and self.parser.open_message is message and message.token_count > count
                        and not message.is_function_call and (self.inline_reasoning or not message.is_reasoning)):
                    kept.append(logprob)
            parts.logprobs = kept
            self.logprobs.extend(kept)
        self.completion_tokens = output.completion_tokens
        self.cached_tokens = output.cached_tokens
        if output.finished:
            self.apply(self.parser.finish(), parts)
            # A call cut short by max_tokens or an abort is not a finished call: keep the engine's reason.
            self.finish_reason = ("tool_calls" if self.tool_calls and output.finish_reason == "stop"
                                  else output.finish_reason)
            self.matched_stop = output.matched_stop
        return parts

    @property
    def reasoning_tokens(self) -> int:
        return sum(message.token_count for message in self.parser.messages if message.is_reasoning)


def _token_logprobs(entries: list[TokenLogprob], tokenizer: TextTokenizer) -> chunk_types.ChoiceLogprobs:
    def fields(token_id: int) -> dict[str, object]:
        return {"token": tokenizer.decode([token_id]), "bytes": list(tokenizer.token_bytes(token_id))}

    return chunk_types.ChoiceLogprobs(content=[
        ChatCompletionTokenLogprob(**fields(entry.token_id), logprob=entry.logprob,
                                   top_logprobs=[TopLogprob(**fields(token_id), logprob=logprob)
                                                 for token_id, logprob in entry.top])
        for entry in entries])


def _new_choice(prompt: ChatPrompt, request: ChatCompletionRequest) -> _ChatChoice:
    parser = HarmonyOutputParser(function_names=prompt.function_names)
    choice = _ChatChoice(parser, allow_tool_calls=prompt.tool_choice != "none",
                         inline_reasoning=not request.separate_reasoning)
    parser.start_assistant_reply()
    return choice


async def create_chat_completion(request: ChatCompletionRequest, http_request: Request,
                                 state: ServingState) -> Response:
    state.check_model(request.model)
    prompt = build_chat_prompt(request, state.tokenizer.encode)
    max_tokens_param = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
    max_new_tokens = resolve_max_new_tokens(
        len(prompt.prompt_ids), request.max_completion_tokens if request.max_completion_tokens is not None
        else request.max_tokens, state.context_length, prompt_param="messages", max_tokens_param=max_tokens_param)
    completion_id = new_id("chatcmpl-")
    name_request(completion_id)
    jobs: list[tuple[list[int], SamplingParams, str]] = []
    for choice_number in range(request.n):
        params = build_sampling_params(request, state.default_params, max_new_tokens=max_new_tokens,
                                       vocab_size=state.vocab_size, seed_offset=choice_number,
                                       logprobs=request.logprobs, top_logprobs=request.top_logprobs or 0,
                                       extra_stop_token_ids=stop_token_ids_for_assistant(),
                                       skip_special_tokens=False)
        params.structured = prompt.structured
        jobs.append((prompt.prompt_ids, params, f"{completion_id}-{choice_number}"))
    choices = [_new_choice(prompt, request) for _ in jobs]
    created = int(time.time())

    def usage() -> object:
        return make_usage(len(prompt.prompt_ids) * len(choices), sum(c.completion_tokens for c in choices),
                          sum(c.cached_tokens for c in choices), sum(c.reasoning_tokens for c in choices))

    if request.stream:
        return StreamingResponse(ending_with_done(_stream_events(request, state, jobs, choices, completion_id,
                                                                 created, usage)),
                                 media_type="text/event-stream")

    # The harmony parser makes the text from the token ids: the engine client's detokenizer would be wasted.
    await collect_until_disconnected(state.generator, jobs, lambda index, output: choices[index].add(output),
                                     http_request.is_disconnected, detokenize=False)
    response = ChatCompletion(
        id=completion_id, object="chat.completion", created=created, model=state.model_name,
        choices=[_final_choice(index, choice, request.logprobs, state.tokenizer)
                 for index, choice in enumerate(choices)],
        usage=usage(),  # type: ignore[arg-type]
        metadata={"weight_version": state.weight_version},
    )
    return JSONResponse(response.model_dump(mode="json", exclude_unset=True))


def _final_choice(index: int, choice: _ChatChoice, with_logprobs: bool, tokenizer: TextTokenizer
                  ) -> completion_types.Choice:
    fields: dict[str, object] = {"content": choice.content or None}
    if choice.tool_calls:
        fields["tool_calls"] = [
            ChatCompletionMessageToolCall(id=call.id, type="function",
                                          function=Function(name=call.name, arguments=call.arguments))
            for call in choice.tool_calls]
    if choice.reasoning:
        fields["reasoning_content"] = choice.reasoning
        fields["reasoning"] = choice.reasoning  # the name several gpt-oss clients read
    message = ChatCompletionMessage(role="assistant", **fields)  # type: ignore[arg-type]
    result = completion_types.Choice(
        index=index, message=message, finish_reason="stop",
        logprobs=completion_types.ChoiceLogprobs(content=_token_logprobs(choice.logprobs, tokenizer).content)
        if with_logprobs else None,
        matched_stop=choice.matched_stop)
    result.finish_reason = choice.finish_reason  # type: ignore[assignment]  # may be "abort"
    return result


async def _stream_events(request: ChatCompletionRequest, state: ServingState,
                         jobs: list[tuple[list[int], SamplingParams, str]], choices: list[_ChatChoice],
                         completion_id: str, created: int, usage: object) -> AsyncIterator[bytes]:
    def chunk(index: int, delta: chunk_types.ChoiceDelta, finish_reason: str | None = None,
              logprobs: list[TokenLogprob] | None = None, matched_stop: int | str | None = None,
              final: bool = False) -> bytes:
        choice = chunk_types.Choice(index=index, delta=delta, finish_reason=None,
                                    logprobs=_token_logprobs(logprobs, state.tokenizer) if logprobs else None)
        if final:
            choice.finish_reason = finish_reason  # type: ignore[assignment]
            choice.matched_stop = matched_stop  # type: ignore[attr-defined]
        return sse_data(ChatCompletionChunk(id=completion_id, object="chat.completion.chunk", created=created,
                                            model=state.model_name, choices=[choice]))

    def delta_of(parts: _DeltaParts, reasoning: bool) -> chunk_types.ChoiceDelta:
        fields: dict[str, object] = {}
        if parts.content:
            fields["content"] = parts.content
        if reasoning and parts.reasoning:
            fields["reasoning_content"] = parts.reasoning
            fields["reasoning"] = parts.reasoning
        if parts.tool_calls:
            fields["tool_calls"] = parts.tool_calls
        return chunk_types.ChoiceDelta(**fields)  # type: ignore[arg-type]

    stream_reasoning = request.stream_reasoning
    for index in range(len(choices)):
        yield chunk(index, chunk_types.ChoiceDelta(role="assistant", content=""))
    async for index, output in state.generator.merged(jobs, detokenize=False):  # the parser makes the text
        choice = choices[index]
        parts = choice.add(output)
        if not parts.empty() and (parts.content or parts.tool_calls or stream_reasoning):
            yield chunk(index, delta_of(parts, stream_reasoning), logprobs=parts.logprobs)
        if output.finished:
            if not stream_reasoning and choice.reasoning:
                yield chunk(index, delta_of(_DeltaParts(reasoning=choice.reasoning), True))
            yield chunk(index, chunk_types.ChoiceDelta(), choice.finish_reason,
                        matched_stop=choice.matched_stop, final=True)
    if request.stream_options and request.stream_options.include_usage:
        yield sse_data(ChatCompletionChunk(id=completion_id, object="chat.completion.chunk", created=created,
                                           model=state.model_name, choices=[], usage=usage()))  # type: ignore[operator]
