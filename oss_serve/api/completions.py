"""POST /v1/completions: raw text or token prompts, no harmony rendering."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from openai.types import Completion, CompletionChoice
from openai.types.completion_choice import Logprobs

from oss_serve.api.access_log import name_request
from oss_serve.api.engine_client import collect_until_disconnected
from oss_serve.api.errors import APIError
from oss_serve.api.protocol import CompletionRequest
from oss_serve.api.sampling import build_sampling_params, check_fan_out, check_prompt_ids, resolve_max_new_tokens
from oss_serve.api.sse import ending_with_done, sse_data
from oss_serve.api.state import ServingState, TextTokenizer, new_id
from oss_serve.api.stream_totals import StreamTotals
from oss_serve.api.usage import make_usage
from oss_serve.engine.outputs import TokenLogprob
from oss_serve.engine.sampling_params import SamplingParams


@dataclass
class _Choice(StreamTotals):
    """One choice accumulated from its stream."""
    prompt_ids: list[int]
    echo_text: str


def _prompt_batch(request: CompletionRequest) -> list[str] | list[list[int]]:
    """The request's prompts as a list, checked for size before any is tokenized."""
    prompt = request.prompt
    if isinstance(prompt, str) or (prompt and all(isinstance(item, int) for item in prompt)):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts:
        raise APIError("prompt is empty.", param="prompt")
    check_fan_out(len(prompts), request.n, "prompt")
    return prompts  # type: ignore[return-value]


def _prompts(request: CompletionRequest, tokenizer: TextTokenizer, vocab_size: int) -> list[tuple[list[int], str]]:
    """(prompt ids, prompt text for echo) for each prompt of the request."""
    prompts = []
    for index, prompt in enumerate(_prompt_batch(request)):
        if isinstance(prompt, str):
            prompts.append((tokenizer.encode(prompt), prompt))
            continue
        param = "prompt" if prompt is request.prompt else f"prompt[{index}]"
        check_prompt_ids(prompt, vocab_size, param)
        prompts.append((list(prompt), tokenizer.decode(prompt) if request.echo else ""))
    return prompts


def _completion_logprobs(entries: list[TokenLogprob], tokenizer: TextTokenizer, start_offset: int) -> Logprobs:
    tokens = [tokenizer.decode([entry.token_id]) for entry in entries]
    offsets: list[int] = []
    offset = start_offset
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return Logprobs(
        tokens=tokens,
        token_logprobs=[entry.logprob for entry in entries],
        top_logprobs=[{tokenizer.decode([token_id]): logprob for token_id, logprob in entry.top}
                      for entry in entries],
        text_offset=offsets,
    )


def _choice_object(index: int, text: str, logprobs: Logprobs | None, finish_reason: str | None,
                   matched_stop: int | str | None) -> CompletionChoice:
    choice = CompletionChoice(index=index, text=text, logprobs=logprobs,
                              finish_reason="stop", matched_stop=matched_stop)
    # openai's type has no "abort" and no pending (None) state; both are on the wire.
    choice.finish_reason = finish_reason  # type: ignore[assignment]
    return choice


async def create_completion(request: CompletionRequest, http_request: Request,
                            state: ServingState) -> Response:
    state.check_model(request.model)
    if request.best_of is not None and request.best_of != request.n:
        raise APIError(f"best_of ({request.best_of}) other than n ({request.n}) is not supported: every "
                       "sequence generated is returned.", param="best_of")
    completion_id = new_id("cmpl-")
    name_request(completion_id)
    jobs, choices = _jobs(request, state, completion_id)
    created = int(time.time())
    model = state.model_name

    def envelope(choice_objects: list[CompletionChoice], **extra: object) -> Completion:
        return Completion(id=completion_id, object="text_completion", created=created, model=model,
                          choices=choice_objects, **extra)  # type: ignore[arg-type]

    def usage() -> object:
        return make_usage(sum(len(c.prompt_ids) for c in choices), sum(c.completion_tokens for c in choices),
                          sum(c.cached_tokens for c in choices), 0)

    if request.stream:
        return StreamingResponse(ending_with_done(_stream_events(request, state, jobs, choices, envelope, usage)),
                                 media_type="text/event-stream")

    await collect_until_disconnected(state.generator, jobs, lambda index, output: choices[index].add(output),
                                     http_request.is_disconnected)
    choice_objects = []
    for index, choice in enumerate(choices):
        logprobs = (_completion_logprobs(choice.logprobs, state.tokenizer, len(choice.echo_text))
                    if request.logprobs is not None else None)
        choice_objects.append(_choice_object(index, choice.echo_text + choice.text, logprobs,
                                             choice.finish_reason, choice.matched_stop))
    response = envelope(choice_objects, usage=usage(), metadata={"weight_version": state.weight_version})
    return JSONResponse(response.model_dump(mode="json", exclude_unset=True))


def _jobs(request: CompletionRequest, state: ServingState, completion_id: str
          ) -> tuple[list[tuple[list[int], SamplingParams, str]], list[_Choice]]:
    """An engine request for each choice of each prompt, and the choice that collects its outputs."""
    jobs: list[tuple[list[int], SamplingParams, str]] = []
    choices: list[_Choice] = []
    for prompt_ids, prompt_text in _prompts(request, state.tokenizer, state.vocab_size):
        max_new_tokens = resolve_max_new_tokens(len(prompt_ids), request.max_tokens, state.context_length,
                                                prompt_param="prompt")
        for choice_number in range(request.n):
            params = build_sampling_params(request, state.default_params, max_new_tokens=max_new_tokens,
                                           vocab_size=state.vocab_size, seed_offset=choice_number,
                                           logprobs=request.logprobs is not None,
                                           top_logprobs=request.logprobs or 0,
                                           skip_special_tokens=request.skip_special_tokens)
            jobs.append((prompt_ids, params, f"{completion_id}-{len(jobs)}"))
            choices.append(_Choice(prompt_ids, prompt_text if request.echo else ""))
    return jobs, choices


async def _stream_events(request: CompletionRequest, state: ServingState,
                         jobs: list[tuple[list[int], SamplingParams, str]], choices: list[_Choice],
                         envelope: Callable[..., Completion], usage: Callable[[], object]) -> AsyncIterator[bytes]:
    for index, choice in enumerate(choices):
        if choice.echo_text:
            yield sse_data(envelope([_choice_object(index, choice.echo_text, None, None, None)]))
    async for index, output in state.generator.merged(jobs):
        choice = choices[index]
        text_offset = len(choice.echo_text) + len(choice.text)
        choice.add(output)
        logprobs = (_completion_logprobs(output.new_logprobs or [], state.tokenizer, text_offset)
                    if request.logprobs is not None else None)
        if output.new_text or logprobs or output.finished:
            yield sse_data(envelope([_choice_object(
                index, output.new_text, logprobs,
                choice.finish_reason if output.finished else None,
                choice.matched_stop if output.finished else None)]))
    if request.stream_options and request.stream_options.include_usage:
        yield sse_data(envelope([], usage=usage()))
