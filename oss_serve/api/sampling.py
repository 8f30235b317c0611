"""Request fields -> engine SamplingParams, with the checks against the context and the vocabulary."""
from __future__ import annotations

from collections.abc import Mapping

from oss_serve.api.errors import APIError
from oss_serve.api.protocol import MAX_SEQUENCES_PER_REQUEST, SamplingFields
from oss_serve.engine.sampling_params import INT64_MIN, InvalidRequest, SamplingParams, check_token_ids


def resolve_max_new_tokens(prompt_tokens: int, max_tokens: int | None, context_length: int, *,
                           prompt_param: str, max_tokens_param: str = "max_tokens") -> int:
    """The output budget: `max_tokens` clamped to what the context leaves after the prompt (as SGLang does;
    the finish reason then says `length`). A 400 only when the prompt itself leaves no room."""
    if prompt_tokens == 0:
        raise APIError("The prompt is empty.", param=prompt_param)
    if prompt_tokens >= context_length:
        raise APIError(f"The prompt is {prompt_tokens} tokens long, but the context length is "
                       f"{context_length} tokens (it must leave room for at least one output token).",
                       param=prompt_param, code="context_length_exceeded")
    if max_tokens is not None and max_tokens < 0:
        raise APIError(f"{max_tokens_param} must be >= 0, got {max_tokens}.", param=max_tokens_param)
    room = context_length - prompt_tokens
    return room if max_tokens is None else min(max_tokens, room)


def check_prompt_ids(ids: list[int], vocab_size: int, param: str) -> None:
    """A 400 naming `param` for a token id outside the vocabulary (the engine would index past its embedding)."""
    try:
        check_token_ids(ids, vocab_size, param)
    except InvalidRequest as error:
        raise APIError(f"{error}.", param=param) from None


def check_fan_out(num_prompts: int, n: int, prompt_param: str) -> None:
    if num_prompts * n > MAX_SEQUENCES_PER_REQUEST:
        raise APIError(f"{prompt_param} has {num_prompts} prompts and n is {n}: {num_prompts * n} sequences, "
                       f"more than the {MAX_SEQUENCES_PER_REQUEST} one request may run.", param=prompt_param)


def validated(params: SamplingParams, vocab_size: int, field_names: Mapping[str, str] | None = None
              ) -> SamplingParams:
    """`params`, or a 400 naming the request field that is out of range (`field_names` maps the engine's
    field names to the endpoint's, e.g. max_new_tokens -> max_tokens)."""
    try:
        params.validate(vocab_size)
    except InvalidRequest as error:
        name = (field_names or {}).get(error.field, error.field)
        raise APIError(f"{name}{str(error).removeprefix(error.field)}.", param=name) from None
    return params


def build_sampling_params(request: SamplingFields, defaults: SamplingParams, *, max_new_tokens: int,
                          vocab_size: int, seed_offset: int = 0,
                          logprobs: bool = False, top_logprobs: int = 0,
                          extra_stop_token_ids: list[int] | None = None,
                          skip_special_tokens: bool = True) -> SamplingParams:
    """One engine request's sampling settings. `seed_offset` keeps the n choices of a seeded
    request different from each other yet reproducible. Fields the request leaves out come from
    `defaults` (generation_config)."""
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=defaults.temperature if request.temperature is None else request.temperature,
        top_p=defaults.top_p if request.top_p is None else request.top_p,
        top_k=defaults.top_k if request.top_k is None else request.top_k,
        min_p=defaults.min_p if request.min_p is None else request.min_p,
        repetition_penalty=(defaults.repetition_penalty if request.repetition_penalty is None
                            else request.repetition_penalty),
        frequency_penalty=request.frequency_penalty,
        presence_penalty=request.presence_penalty,
        seed=None if request.seed is None else _wrapped_int64(request.seed + seed_offset),
        stop=stop,
        stop_token_ids=sorted(set(request.stop_token_ids or []) | set(extra_stop_token_ids or [])),
        ignore_eos=request.ignore_eos,
        n=1,  # the server runs n choices as n engine requests
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        skip_special_tokens=skip_special_tokens,
        include_stop_str_in_output=request.no_stop_trim,
    )
    return validated(params, vocab_size, {"max_new_tokens": "max_tokens"})


def _wrapped_int64(value: int) -> int:
    return (value - INT64_MIN) % 2 ** 64 + INT64_MIN
