"""Request fields -> engine SamplingParams, with the length checks against the context."""
from __future__ import annotations

from oss_serve.api.errors import APIError
from oss_serve.api.protocol import SamplingFields
from oss_serve.engine.sampling_params import SamplingParams

MAX_TOP_LOGPROBS = 20  # the OpenAI API's bound on top logprobs per token


def resolve_max_new_tokens(prompt_tokens: int, max_tokens: int | None, context_length: int, *,
                           prompt_param: str, max_tokens_param: str = "max_tokens") -> int:
    """The output budget; a 400 when the prompt or prompt + max_tokens do not fit."""
    if prompt_tokens == 0:
        raise APIError("The prompt is empty.", param=prompt_param)
    if prompt_tokens >= context_length:
        raise APIError(f"The prompt is {prompt_tokens} tokens long, but the context length is "
                       f"{context_length} tokens (it must leave room for at least one output token).",
                       param=prompt_param, code="context_length_exceeded")
    if max_tokens is None:
        return context_length - prompt_tokens
    if max_tokens < 0:
        raise APIError(f"{max_tokens_param} must be >= 0, got {max_tokens}.", param=max_tokens_param)
    if prompt_tokens + max_tokens > context_length:
        raise APIError(f"{max_tokens_param} is {max_tokens} and the prompt is {prompt_tokens} tokens: "
                       f"together {prompt_tokens + max_tokens}, past the context length of "
                       f"{context_length} tokens.", param=max_tokens_param, code="context_length_exceeded")
    return max_tokens


def build_sampling_params(request: SamplingFields, defaults: SamplingParams, *, max_new_tokens: int,
                          seed_offset: int = 0,
                          logprobs: bool = False, top_logprobs: int = 0,
                          extra_stop_token_ids: list[int] | None = None,
                          skip_special_tokens: bool = True) -> SamplingParams:
    """One engine request's sampling settings. `seed_offset` keeps the n choices of a seeded
    request different from each other yet reproducible. Fields the request leaves out come from `defaults` (generation_config)."""
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
        seed=None if request.seed is None else request.seed + seed_offset,
        stop=stop,
        stop_token_ids=sorted(set(request.stop_token_ids or []) | set(extra_stop_token_ids or [])),
        ignore_eos=request.ignore_eos,
        n=1,  # the server runs n choices as n engine requests
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        skip_special_tokens=skip_special_tokens,
        include_stop_str_in_output=request.no_stop_trim,
    )
    if request.n < 1:
        raise APIError(f"n must be >= 1, got {request.n}.", param="n")
    try:
        params.validate()
    except ValueError as error:
        raise APIError(str(error), param=str(error).split()[0]) from None
    return params
