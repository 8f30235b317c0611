"""The POST /v1/responses body, accepted leniently (unknown fields pass) and checked for what we
can serve. Items and tools stay plain dicts: the openai package types them as TypedDicts, and
the prompt builder reads them by their `type`."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator

from oss_serve.api.protocol import MAX_MESSAGES, MAX_TOOLS, Lenient
from oss_serve.engine.sampling_params import INT64_MAX, INT64_MIN

ReasoningLevel = Literal["low", "medium", "high"]
WEB_SEARCH_TOOL_TYPES = frozenset({"web_search_preview", "web_search_preview_2025_03_11", "web_search",
                                   "web_search_2025_08_26"})
CODE_INTERPRETER_OUTPUTS = "code_interpreter_call.outputs"


class ReasoningConfig(Lenient):
    effort: ReasoningLevel | None = None
    summary: str | None = None


class TextFormat(Lenient):
    type: Literal["text", "json_schema", "json_object"] = "text"


class TextConfig(Lenient):
    format: TextFormat | None = None


class ResponsesRequest(Lenient):
    model: str | None = None
    instructions: str | None = None
    input: str | list[dict[str, Any]] = ""
    tools: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] = "auto"
    parallel_tool_calls: bool = True
    max_tool_calls: int | None = Field(default=None, ge=0)
    max_output_tokens: int | None = Field(default=None, ge=1)  # clamped to what fits the context
    temperature: float | None = None  # None: OpenAI's default of 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    background: bool = False
    include: list[str] = Field(default_factory=list)
    metadata: dict[Annotated[str, StringConstraints(max_length=64)],
                   Annotated[str, StringConstraints(max_length=512)]] | None = Field(None, max_length=16)  # OpenAI's
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    reasoning_effort: ReasoningLevel | None = None  # the chat-style spelling, via the SDK's extra_body
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _bounded_input(cls, value: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if isinstance(value, list) and len(value) > MAX_MESSAGES:
            raise ValueError(f"input has {len(value)} items; at most {MAX_MESSAGES} are accepted")
        return value

    def input_items(self) -> list[dict[str, Any]]:
        """`input` as a list of items (a string is one user message)."""
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": self.input}] if self.input else []
        return list(self.input)
