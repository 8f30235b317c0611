"""What the engine hands back to its callers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first


@dataclass
class StreamOutput:
    """One increment of a running request, as the async API streams it."""
    request_id: str
    new_token_ids: list[int]
    new_text: str  # never splits a multi-byte character, never runs past a stop string
    new_logprobs: list[TokenLogprob] | None
    prompt_tokens: int
    completion_tokens: int  # so far
    cached_tokens: int  # prompt tokens served from the prefix cache
    finished: bool = False
    finish_reason: FinishReason | None = None
    matched_stop: int | str | None = None  # the stop token id or stop string that ended the request
    error: str | None = None
    error_status: int = 503  # 400: the engine refused the request; 500: a step running it failed; 503: no engine


@dataclass
class RequestOutput:
    """A finished request, as the offline LLM API returns it."""
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: FinishReason | None
    matched_stop: int | str | None
    num_cached_tokens: int
    logprobs: list[TokenLogprob] | None = field(default=None)
    # n > 1: every sample (this object is the first); empty otherwise.
    samples: list[RequestOutput] = field(default_factory=list)
