"""Per-request sampling settings, with SGLang's field names."""
from __future__ import annotations

from dataclasses import dataclass, field

from oss_serve.structured.spec import StructuredOutput


@dataclass
class SamplingParams:
    max_new_tokens: int | None = 128  # None: up to the context length
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    skip_special_tokens: bool = True
    # Stop strings are cut from the returned text unless this is set.
    include_stop_str_in_output: bool = False
    # Grammar-constrained decoding (JSON schema, regex, EBNF), harmony-aware; see oss_serve/structured.
    structured: StructuredOutput | None = None

    def validate(self) -> None:
        """Raise ValueError naming the offending field."""
        checks = [
            (self.max_new_tokens is None or self.max_new_tokens >= 0, "max_new_tokens must be >= 0"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k == -1 or self.top_k >= 1, "top_k must be -1 (off) or >= 1"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
            (self.n >= 1, "n must be >= 1"),
            (0 <= self.top_logprobs <= 20, "top_logprobs must be in [0, 20]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
