"""Asking the server under test for one answer, through the Responses or the Chat Completions API.

Connection failures, timeouts, 429s and 5xx replies are retried with exponential backoff, a bounded
number of times; after that, or at once for a request the server rejects (4xx), the example is
scored as failed rather than hanging the run.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import openai

from oss_serve import env

RETRYABLE_ERRORS = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                    openai.InternalServerError)


@dataclass
class SamplerReply:
    text: str
    ok: bool
    error: str = ""
    attempts: int = 1


def api_base_url(base_url: str) -> str:
    """Accept `http://host:port` as well as `http://host:port/v1`."""
    base_url = base_url.rstrip("/")
    return base_url if base_url.endswith("/v1") else base_url + "/v1"


class Sampler:
    def __init__(self, base_url: str, model: str, reasoning_effort: str, temperature: float,
                 max_tokens: int, max_tries: int = 5, backoff_seconds: float = 1.0,
                 request_timeout: float = 3600.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.model = model
        self.reasoning_effort = reasoning_effort
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_tries = max(1, max_tries)
        self.backoff_seconds = backoff_seconds
        self._sleep = sleep
        # The openai client's own retries are off so that the bound here is the only one.
        self.client = openai.OpenAI(base_url=api_base_url(base_url),
                                    api_key=env.openai_api_key() or "EMPTY",
                                    max_retries=0, timeout=request_timeout)

    def ask(self, prompt: str) -> str:
        raise NotImplementedError

    def __call__(self, prompt: str) -> SamplerReply:
        last_error = ""
        for attempt in range(1, self.max_tries + 1):
            try:
                return SamplerReply(self.ask(prompt), ok=True, attempts=attempt)
            except RETRYABLE_ERRORS as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                if attempt < self.max_tries:
                    self._sleep(min(self.backoff_seconds * 2 ** (attempt - 1), 60.0))
            except openai.APIError as exc:  # the server rejected the request: asking again will not help
                return SamplerReply("", ok=False, error=f"{type(exc).__name__}: {exc}", attempts=attempt)
        return SamplerReply("", ok=False, error=f"gave up after {self.max_tries} tries: {last_error}",
                            attempts=self.max_tries)


class ResponsesSampler(Sampler):
    name = "responses"

    def ask(self, prompt: str) -> str:
        response = self.client.responses.create(
            model=self.model, input=[{"role": "user", "content": prompt}], temperature=self.temperature,
            max_output_tokens=self.max_tokens, reasoning={"effort": self.reasoning_effort})
        return response.output_text or ""


class ChatCompletionsSampler(Sampler):
    name = "chat_completions"

    def ask(self, prompt: str) -> str:
        completion = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": prompt}], temperature=self.temperature,
            max_tokens=self.max_tokens, reasoning_effort=self.reasoning_effort)
        return completion.choices[0].message.content or ""


SAMPLERS: dict[str, type[Sampler]] = {"responses": ResponsesSampler, "chat_completions": ChatCompletionsSampler}
