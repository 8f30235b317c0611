"""What one engine request has produced so far, summed from its stream of outputs."""
from __future__ import annotations

from dataclasses import dataclass, field

from oss_serve.engine.outputs import StreamOutput, TokenLogprob


@dataclass(kw_only=True)  # keyword-only, so that subclasses may add positional fields of their own
class StreamTotals:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # empty unless the request asked
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str | None = None
    matched_stop: int | str | None = None

    def add(self, output: StreamOutput) -> None:
        self.text += output.new_text
        self.token_ids.extend(output.new_token_ids)
        self.logprobs.extend(output.new_logprobs or [])
        self.completion_tokens = output.completion_tokens
        self.cached_tokens = output.cached_tokens
        if output.finished:
            self.finish_reason = output.finish_reason
            self.matched_stop = output.matched_stop
