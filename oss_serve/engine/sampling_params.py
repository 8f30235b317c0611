"""Per-request sampling settings, with SGLang's field names, and the bounds every request is held to."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from oss_serve.engine.structured.spec import StructuredOutput

# OpenAI's bounds where it has them (n, top logprobs, penalties); the others keep the engine's
# per-token work per request small (stop strings are searched after every token).
MAX_N = 128
MAX_TOP_LOGPROBS = 20
MAX_STOP_STRINGS = 64
MAX_STOP_STRING_CHARS = 1024
MAX_STOP_TOKEN_IDS = 1024
INT64_MIN, INT64_MAX = -2 ** 63, 2 ** 63 - 1


class InvalidRequest(ValueError):
    """A request the engine will not run; `field` names what is wrong (a SamplingParams field, or "prompt")."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field


def check_token_ids(ids: list[int], vocab_size: int, field: str) -> None:
    """InvalidRequest unless every id is an int in [0, vocab_size)."""
    for index, token_id in enumerate(ids):
        if not isinstance(token_id, int) or not 0 <= token_id < vocab_size:
            raise InvalidRequest(field, f"has {token_id!r} at index {index}: token ids must be integers "
                                        f"in [0, {vocab_size}) (the vocabulary size)")


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

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise InvalidRequest naming the first field out of its range (token ids too, given the vocabulary)."""
        floats = ("temperature", "top_p", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty")
        for name in floats:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidRequest(name, f"must be a finite number, got {value!r}")
        checks = [
            ("max_new_tokens", self.max_new_tokens is None or self.max_new_tokens >= 0, "must be >= 0"),
            ("temperature", self.temperature >= 0, "must be >= 0"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("top_k", self.top_k == -1 or self.top_k >= 1, "must be -1 (off) or >= 1"),
            ("min_p", 0 <= self.min_p <= 1, "must be in [0, 1]"),
            ("repetition_penalty", 0 < self.repetition_penalty <= 2, "must be in (0, 2]"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "must be in [-2, 2]"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "must be in [-2, 2]"),
            ("seed", self.seed is None or INT64_MIN <= self.seed <= INT64_MAX, "must fit in 64 bits"),
            ("n", 1 <= self.n <= MAX_N, f"must be in [1, {MAX_N}]"),
            ("top_logprobs", 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS, f"must be in [0, {MAX_TOP_LOGPROBS}]"),
            ("stop", len(self.stop) <= MAX_STOP_STRINGS, f"may hold at most {MAX_STOP_STRINGS} strings"),
            ("stop", all(isinstance(s, str) and len(s) <= MAX_STOP_STRING_CHARS for s in self.stop),
             f"strings must be at most {MAX_STOP_STRING_CHARS} characters"),
            ("stop_token_ids", len(self.stop_token_ids) <= MAX_STOP_TOKEN_IDS,
             f"may hold at most {MAX_STOP_TOKEN_IDS} ids"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise InvalidRequest(name, f"{message}, got {_shown(getattr(self, name))}")
        if vocab_size is not None:
            check_token_ids(self.stop_token_ids, vocab_size, "stop_token_ids")


def _shown(value: object) -> str:
    """A value for an error message, cut short: a hostile one may be megabytes long."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"
