"""Token accounting in the OpenAI usage shape, plus SGLang's top-level reasoning_tokens."""
from __future__ import annotations

from openai.types import CompletionUsage
from openai.types.completion_usage import CompletionTokensDetails, PromptTokensDetails


def make_usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int,
               reasoning_tokens: int) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning_tokens),
        reasoning_tokens=reasoning_tokens,
    )
