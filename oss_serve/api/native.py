"""SGLang's native endpoints: /generate, health, model and server info, cache flush, and the
parser API (/separate_reasoning, /parse_function_call)."""
from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import TypeAdapter, ValidationError

from oss_serve.api.access_log import name_request
from oss_serve.api.engine_client import collect_until_disconnected
from oss_serve.api.errors import APIError
from oss_serve.api.protocol import GenerateRequest, ParseFunctionCallRequest, SeparateReasoningRequest
from oss_serve.api.sampling import check_fan_out, check_prompt_ids, resolve_max_new_tokens, validated
from oss_serve.api.sse import ending_with_done, sse_data
from oss_serve.api.state import ServingState, new_id
from oss_serve.api.stream_totals import StreamTotals
from oss_serve.api.structured_outputs import generate_structured_output
from oss_serve.engine.sampling_params import SamplingParams
from oss_serve.harmony.parse import parse_output_text

_SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}
_SAMPLING_ADAPTER = TypeAdapter(SamplingParams)
_SAMPLING_PARAM_NAMES = {name: f"sampling_params.{name}" for name in _SAMPLING_FIELDS}  # as the request spells them


def _sampling_params(fields: dict[str, Any], defaults: SamplingParams, vocab_size: int) -> SamplingParams:
    """SGLang's `sampling_params` object; unknown keys are ignored as SGLang's own extras, and null is
    "not given" (for max_new_tokens, as in SGLang: up to the context)."""
    known = {key: value for key, value in fields.items()
             if key in _SAMPLING_FIELDS and (value is not None or key == "max_new_tokens")}
    if isinstance(known.get("stop"), str):
        known["stop"] = [known["stop"]]
    try:
        checked = _SAMPLING_ADAPTER.validate_python(known)
    except ValidationError as error:
        first = error.errors()[0]
        field_name = ".".join(str(part) for part in first["loc"])
        raise APIError(f"sampling_params.{field_name}: {first['msg']}",
                       param=f"sampling_params.{field_name}") from None
    params = dataclasses.replace(defaults, **{key: getattr(checked, key) for key in known})
    return validated(params, vocab_size, _SAMPLING_PARAM_NAMES)


@dataclasses.dataclass
class _GenerateResult(StreamTotals):
    request_id: str
    prompt_tokens: int
    with_logprobs: bool = False  # return_logprob

    def as_json(self, token_text: Callable[[int], str] | None = None) -> dict[str, Any]:
        """SGLang's shape. Logprob entries are [logprob, token id, text] (text only if `token_text`)."""
        finish = None if self.finish_reason is None else {"type": self.finish_reason, "matched": self.matched_stop}
        meta: dict[str, Any] = {
            "id": self.request_id, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens, "finish_reason": finish}
        if self.with_logprobs:
            def entry(token_id: int, logprob: float) -> list[Any]:
                return [logprob, token_id, token_text(token_id) if token_text else None]

            meta["output_token_logprobs"] = [entry(e.token_id, e.logprob) for e in self.logprobs]
            meta["output_top_logprobs"] = [[entry(token_id, logprob) for token_id, logprob in e.top]
                                           for e in self.logprobs]
            meta["input_token_logprobs"] = None  # prompt logprobs are not computed
        return {"text": self.text, "output_ids": self.token_ids, "meta_info": meta}


def _generate_prompts(request: GenerateRequest, state: ServingState, n: int) -> tuple[list[list[int]], bool]:
    """(prompt ids of each prompt, whether the request was a batch), checked before any is tokenized."""
    if (request.text is None) == (request.input_ids is None):
        raise APIError("Give exactly one of text and input_ids.", param="text")
    param = "text" if request.text is not None else "input_ids"
    batched = isinstance(request.text, list) or (
        isinstance(request.input_ids, list) and bool(request.input_ids) and isinstance(request.input_ids[0], list))
    given = request.text if request.text is not None else request.input_ids
    prompts: list[Any] = given if batched else [given]  # type: ignore[assignment]
    if not prompts:
        raise APIError(f"{param} is an empty batch.", param=param)
    check_fan_out(len(prompts), n, param)
    if request.text is not None:
        return [state.tokenizer.encode(text) for text in prompts], batched
    for index, ids in enumerate(prompts):
        check_prompt_ids(ids, state.vocab_size, f"input_ids[{index}]" if batched else "input_ids")
    return prompts, batched


async def generate(request: GenerateRequest, http_request: Request, state: ServingState) -> Response:
    params = _sampling_params(request.sampling_params, state.default_params, state.vocab_size)
    n, params.n = params.n, 1  # n samples of a prompt run as n engine requests
    prompts, batched = _generate_prompts(request, state, n)
    base_id = request.rid or new_id("")
    name_request(base_id)
    params.structured = generate_structured_output(request.sampling_params)
    if request.return_logprob:
        params.logprobs, params.top_logprobs = True, request.top_logprobs_num
    token_text = (lambda token_id: state.tokenizer.decode([token_id])) if request.return_text_in_logprobs else None
    jobs = []
    results = []
    for prompt_ids in prompts:
        budget = resolve_max_new_tokens(len(prompt_ids), params.max_new_tokens, state.context_length,
                                        prompt_param="text" if request.text is not None else "input_ids",
                                        max_tokens_param="sampling_params.max_new_tokens")
        for _ in range(n):
            request_id = base_id if len(prompts) * n == 1 else f"{base_id}-{len(jobs)}"
            jobs.append((list(prompt_ids), dataclasses.replace(params, max_new_tokens=budget), request_id))
            results.append(_GenerateResult(request_id, len(prompt_ids), with_logprobs=request.return_logprob))
    batched = batched or n > 1  # SGLang answers n > 1 with a list, n entries per prompt

    if request.stream:
        async def events() -> AsyncIterator[bytes]:
            async for index, output in state.generator.merged(jobs):
                results[index].add(output)
                payload = results[index].as_json(token_text)
                payload["index"] = index
                yield sse_data(payload)
        return StreamingResponse(ending_with_done(events()), media_type="text/event-stream")

    await collect_until_disconnected(state.generator, jobs, lambda index, output: results[index].add(output),
                                     http_request.is_disconnected)
    body: Any = [result.as_json(token_text) for result in results] if batched else results[0].as_json(token_text)
    return JSONResponse(body)


async def health_generate(state: ServingState) -> Response:
    """200 when a one-token generation goes through the whole engine."""
    params = SamplingParams(max_new_tokens=1, temperature=0.0)
    try:
        async for _ in state.generator.stream([state.tokenizer.encode("ping")[0]], params, new_id("health-")):
            pass
    except Exception as error:  # noqa: BLE001 - reported as unhealthy
        raise APIError(f"generation failed: {error}", status=503) from None
    return Response(status_code=200)


def model_info(state: ServingState) -> dict[str, Any]:
    args = state.server_args
    return {"model_path": args.model_path, "tokenizer_path": args.tokenizer_path or args.model_path,
            "served_model_name": state.model_name, "is_generation": True,
            "weight_version": state.weight_version, "context_length": state.context_length}


def server_info(state: ServingState) -> dict[str, Any]:
    info: dict[str, Any] = dataclasses.asdict(state.server_args)
    if info.get("api_key"):
        info["api_key"] = "***"
    info["context_length"] = state.context_length
    info["engine"] = dataclasses.asdict(state.engine.stats())
    return info


def separate_reasoning(request: SeparateReasoningRequest) -> dict[str, Any]:
    messages = parse_output_text(request.text)
    reasoning = "".join(message.text for message in messages if message.is_reasoning)
    rest = "".join(message.text for message in messages if not message.is_reasoning)
    return {"reasoning_text": reasoning, "text": rest}


def parse_function_call(request: ParseFunctionCallRequest) -> dict[str, Any]:
    names = [tool.function.name for tool in request.tools]
    messages = parse_output_text(request.text, function_names=names)
    calls = []
    for message in messages:
        if message.is_function_call:
            name = message.function_name or ""
            calls.append({"tool_index": names.index(name) if name in names else -1,
                          "name": name, "parameters": message.text})
    normal = "".join(message.text for message in messages
                     if not message.is_function_call and not message.is_reasoning)
    return {"normal_text": normal, "calls": calls}


def models_list(state: ServingState) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": state.model_name, "object": "model",
                                        "created": int(state.started_at), "owned_by": "oss-serve",
                                        "root": state.server_args.model_path,
                                        "max_model_len": state.context_length}]}

